package console

import (
	"fmt"
	"html/template"
	"strings"
	"time"
)

// chart renders a group's lag over the window ending at now as an inline
// SVG: a polyline per series, x by time, y scaled to the highest value. It
// holds only numbers the console computed, so it is safe as template.HTML.
func chart(pts []point, now time.Time, window time.Duration, w, h int, withPending bool) template.HTML {
	var maxV int64 = 1
	for _, p := range pts {
		maxV = max(maxV, p.Lag)
		if withPending {
			maxV = max(maxV, p.Pending)
		}
	}
	const pad = 2
	x := func(t time.Time) float64 {
		f := 1 - float64(now.Sub(t))/float64(window)
		return pad + min(max(f, 0), 1)*float64(w-2*pad)
	}
	y := func(v int64) float64 {
		return float64(h-pad) - float64(v)/float64(maxV)*float64(h-2*pad)
	}
	line := func(val func(point) int64) string {
		var b strings.Builder
		for i, p := range pts {
			if i > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%.1f,%.1f", x(p.At), y(val(p)))
		}
		return b.String()
	}
	var b strings.Builder
	last := int64(0)
	if len(pts) > 0 {
		last = pts[len(pts)-1].Lag
	}
	fmt.Fprintf(&b, `<svg class="chart" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="lag over the last %s">`, w, h, w, h, fmtDuration(window))
	fmt.Fprintf(&b, `<title>lag over the last %s: now %s, highest %s (%d samples)</title>`, fmtDuration(window), fmtNum(last), fmtNum(maxV), len(pts))
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" class="bg"/>`, w, h)
	fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" class="axis"/>`, pad, y(0), w-pad, y(0))
	if len(pts) == 1 {
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2" class="lag"/>`, x(pts[0].At), y(pts[0].Lag))
	} else if len(pts) > 1 {
		if withPending {
			fmt.Fprintf(&b, `<polyline points="%s" class="pending"/>`, line(func(p point) int64 { return p.Pending }))
		}
		fmt.Fprintf(&b, `<polyline points="%s" class="lag"/>`, line(func(p point) int64 { return p.Lag }))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}
