# bench/plot.gp: goodput against loss, one panel per RTT, one line per tool and direction.
# bench/wan writes the data files (one per RTT: a header line "loss tool/dir ...", then one row
# per loss rate, "?" where a tool has no figure) and calls
#   gnuplot -e "datafiles='a.dat b.dat'; rtts='10 50'; ncols=9; rate='100'; out='x.png'" bench/plot.gp
# Loss rates are placed evenly (0, 0.1, 1, 5 % are not a scale), labelled with their value.

if (!exists("datafiles") || !exists("rtts") || !exists("ncols") || !exists("out")) {
    print "plot.gp: set datafiles, rtts, ncols, rate and out with -e"
    exit status 2
}
if (!exists("rate")) rate = "?"

n = words(datafiles)
set terminal pngcairo size (480 * n + 260), 460 font "sans,10"
set output out
set datafile missing "?"
set key outside right top vertical spacing 1.1 font "sans,9" noautotitle
set grid ytics lc rgb "#dddddd"
set xlabel "loss each way (%)"
set ylabel "goodput (Mbit/s)"
set yrange [0:*]
set offsets 0.3, 0.3, 0, 0
set style data linespoints
set pointsize 1.0

# gnuplot has 8 default colours: later lines are dashed so none is confused with another.
dtype(i) = i > 9 ? 2 : 1
set multiplot layout 1, n title sprintf("Goodput against loss, %s Mbit/s link (bench/wan)", rate)
do for [p = 1:n] {
    f = word(datafiles, p)
    set title sprintf("RTT %s ms", word(rtts, p))
    # Only the last panel carries the key, so the panels keep the same width for the data.
    if (p < n) { unset key } else { set key }
    plot for [i = 2:ncols] f using 0:i:xtic(1) title columnheader(i) lw 2 dt dtype(i)
}
unset multiplot
