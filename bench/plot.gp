# Plots of the load tests that bench/run-all writes (gnuplot 5).
#   gnuplot -e "datadir='DIR'; outdir='DIR'" bench/plot.gp
# Reads DIR/throughput.dat (concurrency out_tok_s req_s roofline_tok_s) and
# DIR/latency.dat (concurrency ttft_p50 ttft_p90 ttft_p99 itl_p50 itl_p90
# itl_p99, milliseconds); writes outdir/throughput.png and outdir/latency.png.
if (!exists("datadir")) datadir = "."
if (!exists("outdir")) outdir = "."

if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
    set terminal pngcairo size 900,560 enhanced font "sans,10"
} else {
    set terminal png size 900,560
}
set grid
set key top left
set logscale x 2
set xlabel "concurrent streams"
set datafile missing "NaN"

set output outdir."/throughput.png"
set title "Aggregate decode throughput vs concurrency"
set ylabel "output tokens/s"
set y2label "requests/s"
set ytics nomirror
set y2tics
plot datadir."/throughput.dat" using 1:2 with linespoints lw 2 pt 7 title "output tok/s", \
     datadir."/throughput.dat" using 1:4 with lines dt 2 lw 2 title "roofline tok/s (same run)", \
     datadir."/throughput.dat" using 1:3 axes x1y2 with linespoints pt 5 title "requests/s"

unset y2label
unset y2tics
set ytics mirror
set output outdir."/latency.png"
set title "Latency percentiles vs concurrency"
set ylabel "milliseconds"
set logscale y 10
plot datadir."/latency.dat" using 1:2 with linespoints lw 2 pt 7 lc 1 title "TTFT p50", \
     datadir."/latency.dat" using 1:3 with linespoints lw 1 pt 6 lc 1 dt 2 title "TTFT p90", \
     datadir."/latency.dat" using 1:4 with linespoints lw 1 pt 4 lc 1 dt 3 title "TTFT p99", \
     datadir."/latency.dat" using 1:5 with linespoints lw 2 pt 7 lc 2 title "ITL p50", \
     datadir."/latency.dat" using 1:6 with linespoints lw 1 pt 6 lc 2 dt 2 title "ITL p90", \
     datadir."/latency.dat" using 1:7 with linespoints lw 1 pt 4 lc 2 dt 3 title "ITL p99"
set output
