"""Side-by-side: G of the CUT preset translating one 2048x1024 image in two processes that
differ only in malloc (cut_core.allocator on, or RAYCUT_MALLOC=default), alternating
round by round. Usage: PYTHONPATH=. python docs/bench/malloc_translate_ab.py fp32 4"""
import os, sys, time, statistics as st, multiprocessing as mp
def worker(conn, tune, prec):
    if not tune: os.environ["RAYCUT_MALLOC"] = "default"
    import torch, resource
    from cut_core.allocator import keep_freed_memory
    print(keep_freed_memory(), flush=True)
    from cut_core.config import CUTConfig
    from cut_core.networks import build_generator
    G = build_generator(CUTConfig.cut().model).eval()
    x = torch.rand(1, 3, 1024, 2048) * 2 - 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
        G(x)
        conn.send("ready")
        while conn.recv() == "step":
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t = time.perf_counter(); G(x); dt = time.perf_counter() - t
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            conn.send((dt, r1.ru_minflt - r0.ru_minflt, r1.ru_maxrss // 1024))
if __name__ == "__main__":
    prec, rounds = sys.argv[1], int(sys.argv[2])
    ctx = mp.get_context("spawn"); procs = {}
    for tune in (False, True):
        a, b = ctx.Pipe(); p = ctx.Process(target=worker, args=(b, tune, prec)); p.start(); procs[tune] = (p, a)
    for p, c in procs.values(): assert c.recv() == "ready"
    res = {False: [], True: []}
    for r in range(rounds):
        for k in ((False, True) if r % 2 == 0 else (True, False)):
            procs[k][1].send("step"); res[k].append(procs[k][1].recv())
    for p, c in procs.values(): c.send("stop"); p.join()
    for k in (False, True):
        print(f"translate 2048x1024 {prec} malloc={'tuned' if k else 'default'}: {st.median(x[0] for x in res[k])*1000:.0f} ms faults {st.median(x[1] for x in res[k]):.0f} maxrss MB {res[k][-1][2]}")
    print("ratio", st.median(t[0]/d[0] for d, t in zip(res[False], res[True])))
