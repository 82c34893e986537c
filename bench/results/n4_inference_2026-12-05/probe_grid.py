"""bench_quality with raxnet.intensity.N4_GRID_MM patched (first arg), the rest passed on."""
import runpy, sys
import raxnet.intensity as I
I.N4_GRID_MM = float(sys.argv[1])
sys.argv = ["bench/bench_quality.py", *sys.argv[2:]]
runpy.run_path("bench/bench_quality.py", run_name="__main__")
