package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
)

// flatSample is the process's memory after some entries in -flat mode.
type flatSample struct {
	Entries       int64   `json:"entries"`
	Seconds       float64 `json:"seconds"`
	VmRSSMiB      float64 `json:"vmrss_mib"`
	HeapInuseMiB  float64 `json:"heap_inuse_mib"`
	HeapObjects   uint64  `json:"heap_objects"`
	Goroutines    int     `json:"goroutines"`
	SourceLen     int64   `json:"source_xlen"`
	EntriesPerSec float64 `json:"entries_per_sec"` // since the previous sample
}

// flatChunk is the most entries the -flat producer appends at once.
const flatChunk = 10000

// runFlat streams opt.flat entries through one Stateful+publish consumer
// while a producer keeps at most opt.flatWindow entries in the source
// stream, trimming what was committed (and the published entries, which
// nobody reads) as it goes. It samples the process's memory every 100,000
// committed entries: the point is that it stays flat, bounded by the batch
// size and the window, not by the stream's length.
func (b *bench) runFlat(ctx context.Context) ([]flatSample, error) {
	n, window := b.opt.flat, b.opt.flatWindow
	every := int64(min(100000, max(n/10, 1)))
	prefix := b.newPrefix()
	src, out := prefix+"src", prefix+"out"
	b.cleanup(prefix, src, out)
	defer b.cleanup(prefix, src, out)
	if err := b.rdb.XGroupCreateMkStream(ctx, src, group, "0").Err(); err != nil {
		return nil, err
	}

	r := &trial{
		rdb: b.rdb, src: src, out: out, batch: b.opt.flatBatch, consumers: 1,
		track: newTracker(n), events: &eventCounts{},
	}
	var lastID atomic.Pointer[string]
	sampleAt := make(chan int64, 64)
	nextSample := every
	r.onCommit = func(e streamtx.Event) { // called from the consumer goroutine only
		if len(e.IDs) > 0 {
			lastID.Store(&e.IDs[len(e.IDs)-1])
		}
		if c := r.track.count.Load(); c >= nextSample {
			nextSample = (c/every + 1) * every
			select {
			case sampleAt <- c:
			default:
			}
		}
	}
	launch, err := r.prepare(stxStateful)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()

	runtime.GC()
	if b.peakReset {
		resetPeakRSS()
	}
	start := time.Now()
	var samples []flatSample
	sample := func(entries int64) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		s := flatSample{
			Entries:      entries,
			Seconds:      time.Since(start).Seconds(),
			VmRSSMiB:     mib(procStatusKiB("VmRSS")),
			HeapInuseMiB: float64(ms.HeapInuse) / (1 << 20),
			HeapObjects:  ms.HeapObjects,
			Goroutines:   runtime.NumGoroutine(),
			SourceLen:    b.rdb.XLen(ctx, src).Val(),
		}
		if len(samples) > 0 {
			p := samples[len(samples)-1]
			if dt := s.Seconds - p.Seconds; dt > 0 {
				s.EntriesPerSec = float64(s.Entries-p.Entries) / dt
			}
		}
		samples = append(samples, s)
		fmt.Fprintf(os.Stderr, "flat: %d entries, VmRSS %.1f MiB, heap %.1f MiB, source XLEN %d\n",
			s.Entries, s.VmRSSMiB, s.HeapInuseMiB, s.SourceLen)
	}
	sample(0)
	wait := launch(rctx)

	produced := make(chan error, 1)
	go func() { produced <- b.produceFlat(rctx, r, &lastID, n, window) }()

	var runErr error
loop:
	for {
		select {
		case c := <-sampleAt:
			sample(c)
		case <-r.track.done:
			break loop
		case err := <-produced:
			if err != nil {
				runErr = fmt.Errorf("producer: %w", err)
				break loop
			}
			produced = nil
		case <-ctx.Done():
			runErr = ctx.Err()
			break loop
		}
	}
	cancel()
	if err := wait(); err != nil && runErr == nil {
		runErr = err
	}
	if runErr != nil {
		return samples, runErr
	}
	if last := samples[len(samples)-1]; last.Entries < int64(n) {
		sample(r.track.count.Load())
	}
	if produced != nil {
		<-produced
	}
	space, err := keys.NewSpace(src, group)
	if err != nil {
		return samples, err
	}
	sum, err := b.stateSum(ctx, []string{space.State(stateName)})
	switch {
	case err != nil:
		return samples, err
	case sum != int64(n):
		return samples, fmt.Errorf("counter is %d after %d entries", sum, n)
	case r.events.firstErr != nil:
		return samples, r.events.firstErr
	}
	return samples, nil
}

// produceFlat appends n entries to r.src in chunks, keeping at most window
// uncommitted ones, and trims the committed entries from the source stream
// and everything from the (unread) publish target.
func (b *bench) produceFlat(ctx context.Context, r *trial, lastID *atomic.Pointer[string], n, window int) error {
	chunk := min(flatChunk, window/2)
	var trimmed *string
	trim := func() error {
		id := lastID.Load()
		if id == nil || id == trimmed {
			return nil
		}
		trimmed = id
		if err := b.rdb.XTrimMinID(ctx, r.src, *id).Err(); err != nil {
			return err
		}
		return b.rdb.XTrimMaxLen(ctx, r.out, 0).Err()
	}
	for produced := 0; produced < n; {
		if ctx.Err() != nil {
			return nil
		}
		if err := trim(); err != nil {
			return err
		}
		backlog := produced - int(r.track.count.Load())
		if backlog+chunk > window {
			time.Sleep(2 * time.Millisecond) // polling the consumer's progress
			continue
		}
		k := min(chunk, n-produced)
		if err := preload(ctx, b.rdb, r.src, produced, k); err != nil {
			return err
		}
		produced += k
	}
	return nil
}

func printFlat(w io.Writer, rep *report) {
	fmt.Fprintf(w, "## streamtx memory flatness\n\n")
	if len(rep.Flat) > 0 {
		last := rep.Flat[len(rep.Flat)-1]
		fmt.Fprintf(w, "%s entries through stx-stateful (Stateful counter + 1 publish), one consumer at batch %d. "+
			"A producer keeps at most %s uncommitted entries in the source stream and trims it behind the commits "+
			"(and the unread publish target to empty). %s entries/s overall; check: %s.\n\n",
			thousands(float64(last.Entries)), rep.FlatBatch, thousands(float64(rep.FlatWindow)),
			thousands(float64(last.Entries)/last.Seconds), rep.FlatCheck)
	}
	fmt.Fprintln(w, "| entries committed | seconds | VmRSS MiB | heap in use MiB | heap objects | goroutines | source XLEN | entries/s |")
	fmt.Fprintln(w, "|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, s := range rep.Flat {
		fmt.Fprintf(w, "| %s | %.1f | %.1f | %.1f | %s | %d | %s | %s |\n", thousands(float64(s.Entries)), s.Seconds,
			s.VmRSSMiB, s.HeapInuseMiB, thousands(float64(s.HeapObjects)), s.Goroutines,
			thousands(float64(s.SourceLen)), thousands(s.EntriesPerSec))
	}
	printMachine(w, rep)
}
