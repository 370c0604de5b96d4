// Command benchchart draws the benchmarks' results as an SVG bar chart: for
// every operation, the rate through taglock, through the bare proxy (the
// control) and through nginx, each divided by the rate of the registry
// direct, with the 1.0 line (as fast as direct) marked. scripts/bench.sh
// runs it on the JSON the benchmarks write (TAGLOCK_BENCH_JSON); the chart
// committed as docs/benchmarks.svg is its output.
//
// Usage:
//
//	benchchart [-in bin/bench.json] [-out docs/benchmarks.svg]
//
// A benchmark run more than once (go test -count) is drawn with the median
// of its runs' ratios. Results without ratios (the memory benchmarks) are
// left out. It lives in scripts/ so that its plotting library stays out of
// taglock's binary.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// results is the file the benchmarks write (integration/bench/results_test.go
// defines it); only the fields the chart needs.
type results struct {
	Commit  string   `json:"commit"`
	Started string   `json:"started"`
	Results []result `json:"results"`
}

type result struct {
	Name  string             `json:"name"`
	Label string             `json:"label"`
	Ratio map[string]float64 `json:"ratio"`
}

// series are the paths drawn, in legend order, with their legend names and
// colours.
var series = []struct {
	path, legend string
	color        color.RGBA
}{
	{"taglock", "taglock", color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}},
	{"control", "bare proxy (control)", color.RGBA{R: 0xaa, G: 0xaa, B: 0xaa, A: 0xff}},
	{"nginx", "nginx", color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}},
}

// operation is one group of bars: the median ratio to direct of each
// series, NaN-free; a path a result lacks is 0.
type operation struct {
	label  string
	ratios []float64 // in series order
}

func init() {
	// Sans-serif text reads better at small sizes; set before any plot.
	plot.DefaultFont.Variant = "Sans"
	plotter.DefaultFont = plot.DefaultFont
}

func main() {
	in := flag.String("in", "bin/bench.json", "the benchmarks' results (JSON)")
	out := flag.String("out", "docs/benchmarks.svg", "the chart to write (SVG)")
	flag.Parse()
	if err := run(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "benchchart:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	f, err := os.Open(in)
	if err != nil {
		return err
	}
	defer f.Close()
	var rs results
	if err := json.NewDecoder(f).Decode(&rs); err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	w, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := render(rs, w); err != nil {
		w.Close()
		os.Remove(out)
		return err
	}
	return w.Close()
}

// operations groups the results by benchmark, in the order they first
// appear, and takes the median of each ratio over a benchmark's runs.
func operations(rs results) []operation {
	var order []string
	runs := map[string][]result{}
	for _, r := range rs.Results {
		if len(r.Ratio) == 0 {
			continue
		}
		if _, ok := runs[r.Name]; !ok {
			order = append(order, r.Name)
		}
		runs[r.Name] = append(runs[r.Name], r)
	}
	ops := make([]operation, 0, len(order))
	for _, name := range order {
		op := operation{label: runs[name][0].Label}
		if op.label == "" {
			op.label = strings.TrimPrefix(name, "Benchmark")
		}
		for _, s := range series {
			var xs []float64
			for _, r := range runs[name] {
				if x, ok := r.Ratio[s.path]; ok {
					xs = append(xs, x)
				}
			}
			op.ratios = append(op.ratios, median(xs))
		}
		ops = append(ops, op)
	}
	return ops
}

// median is the median of xs, or 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// render draws the chart of rs as SVG to w.
func render(rs results, w io.Writer) error {
	ops := operations(rs)
	if len(ops) == 0 {
		return errors.New("no results with ratios to draw")
	}
	p := plot.New()
	p.Title.Text = "Rate through each proxy ÷ rate direct to the registry"
	if sub := subtitle(rs); sub != "" {
		p.Title.Text += "\n" + sub
	}
	p.X.Label.Text = "× direct (median of per-iteration ratios; higher is faster)"
	p.X.Min = 0
	top := 1.0
	for _, op := range ops {
		for _, r := range op.ratios {
			top = max(top, r)
		}
	}
	p.X.Max = top * 1.18 // room for the value labels
	p.X.Tick.Marker = ticks{}
	p.Legend.Top = true
	p.Legend.Left = false
	p.Legend.XOffs = -vg.Points(4)
	p.Legend.TextStyle.Font.Size = vg.Points(10)

	// Operations top to bottom in run order: the Y axis counts upwards.
	n := len(ops)
	names := make([]string, n)
	for i, op := range ops {
		names[n-1-i] = op.label
	}
	p.NominalY(names...)
	grid := plotter.NewGrid()
	grid.Horizontal.Color = nil // bars, not lines, mark the operations
	p.Add(grid)

	direct, err := plotter.NewLine(plotter.XYs{{X: 1, Y: -0.5}, {X: 1, Y: float64(n) - 0.5}})
	if err != nil {
		return err
	}
	direct.Color = color.RGBA{R: 0xc0, A: 0xff}
	direct.Width = vg.Points(1)
	direct.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(direct) // under the bars and their values

	const barWidth = 7 // points
	group := vg.Points(barWidth * float64(len(series)))
	for j, s := range series {
		vals := make(plotter.Values, n)
		xys := make(plotter.XYs, n)
		texts := make([]string, n)
		for i, op := range ops {
			y := n - 1 - i
			vals[y] = op.ratios[j]
			xys[y] = plotter.XY{X: op.ratios[j], Y: float64(y)}
			if op.ratios[j] > 0 { // 0: the path was not measured
				texts[y] = fmt.Sprintf("%.2f×", op.ratios[j])
			}
		}
		bars, err := plotter.NewBarChart(vals, vg.Points(barWidth))
		if err != nil {
			return err
		}
		bars.Horizontal = true
		bars.Color = s.color
		bars.LineStyle.Width = 0
		// The first series on top of its group.
		offset := group/2 - vg.Points(barWidth)*vg.Length(j) - vg.Points(barWidth)/2
		bars.Offset = offset
		p.Add(bars)
		p.Legend.Add(s.legend, bars)

		labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
		if err != nil {
			return err
		}
		for k := range labels.TextStyle {
			labels.TextStyle[k].Font.Size = vg.Points(7)
			labels.TextStyle[k].YAlign = draw.YCenter
		}
		labels.Offset = vg.Point{X: vg.Points(2), Y: offset}
		p.Add(labels)
	}
	p.Legend.Add("direct = 1.0", direct)

	height := max(vg.Points(60)+vg.Points(float64(n)*(float64(barWidth*len(series))+10)), 3*vg.Inch)
	c := vgsvg.New(9*vg.Inch, height)
	// A margin on the left for a viewer that lays the operations' names
	// out in a wider font than the one they were measured in.
	p.Draw(draw.Crop(draw.New(c), vg.Points(24), 0, 0, 0))
	var svg bytes.Buffer
	if _, err := c.WriteTo(&svg); err != nil {
		return err
	}
	// The SVG names only Liberation Sans, which the layout was measured
	// with; Arial and Helvetica have the same metrics, and a viewer
	// without any of them should still pick a sans-serif font.
	_, err = io.WriteString(w, strings.ReplaceAll(svg.String(),
		"font-family:Liberation Sans;", "font-family:'Liberation Sans',Arial,Helvetica,sans-serif;"))
	return err
}

// ticks marks the ratio axis at every whole ratio, and at every quarter
// when the axis is short, so that 1.0 and its neighbours are easy to read.
type ticks struct{}

func (ticks) Ticks(lo, hi float64) []plot.Tick {
	step := 1.0
	if hi-lo <= 3 {
		step = 0.25
	}
	var ts []plot.Tick
	for i := math.Ceil(lo / step); i*step <= hi; i++ {
		x := i * step
		t := plot.Tick{Value: x}
		if step == 1 || math.Mod(x, 0.5) == 0 {
			t.Label = strconv.FormatFloat(x, 'f', -1, 64)
		}
		ts = append(ts, t)
	}
	return ts
}

// subtitle names the run: its date and commit.
func subtitle(rs results) string {
	var parts []string
	if d, _, _ := strings.Cut(rs.Started, "T"); d != "" {
		parts = append(parts, d)
	}
	if rs.Commit != "" {
		parts = append(parts, "commit "+rs.Commit)
	}
	return strings.Join(parts, ", ")
}
