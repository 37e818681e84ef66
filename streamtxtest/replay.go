package streamtxtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/record"
)

// ReplaySeedEnv names the environment variable that makes CheckReplaySafe
// run one faulty run, with the seed it holds: what a failure message tells
// to set.
const ReplaySeedEnv = "STREAMTX_REPLAY_SEED"

// ReplayOptions configures CheckReplaySafe. The zero value of every field
// means its default.
type ReplayOptions struct {
	// Options configures every run (see Options).
	Options
	// Runs is the number of runs with faults. Default 20.
	Runs int
	// Seed is the seed of the first run with faults; run i uses Seed+i.
	// Default: a random one (a failure prints it).
	Seed uint64
	// Rate is the probability of a fault after each successful handler
	// call. Default 0.5.
	Rate float64
	// Kinds are the faults to inject. Default AllFaults(); on a topic,
	// without Claim and Conflict (see Fault).
	Kinds []Fault
	// KeyField names, on a topic (Options.Topic), the field of each input
	// that holds its entry key: each input is sent with SendKeyed(key,
	// input), the field staying among the values. Default "key".
	KeyField string
}

// CheckReplaySafe checks that a handler leaves the same results in Redis
// whatever faults the engine recovers from: it runs inputs once without
// faults, then opts.Runs times with faults injected at random (see Faults),
// each run on a fresh Redis (or key prefix) with a handler from newHandler,
// and fails the test when a run with faults leaves other results than the
// clean run. Results are
//
//   - every state record of the group (its value, decoded as msgpack or
//     JSON when it is one; versions are left out),
//   - every other stream in the test's Redis — what the handler published,
//     with tx.Publish, with tx.PublishKeyed (the partitions of
//     Options.Topics) or otherwise — with entry IDs left out,
//   - the dead letters: original fields and error text.
//
// The failure prints a diff of the two results, the faults injected and
// the seed, with the command that re-runs that seed alone (see
// ReplaySeedEnv). It also fails when a handler call returned nil after
// tx.Publish failed: the consumer fails such a call anyway, dropping the
// state changes the handler went on to make.
//
// Inputs are sent one at a time, each drained before the next, so that
// entries are handled in input order in every run: the check is about
// replays, not about order (a retried entry is otherwise handled after
// those behind it, see the package streamtx docs).
//
// On a topic (opts.Topic), each input is sent to the partition of its key
// (opts.KeyField); the results hold the state records of every partition
// and the dead letters of every partition.
//
// What it cannot see: effects outside the test's Redis (HTTP calls, other
// databases, a Redis of your own), which run at least once whatever the
// handler does; and a handler whose results depend on msg.Deliveries, the
// time, or randomness differs by design.
func CheckReplaySafe(t testing.TB, newHandler func() streamtx.Handler, inputs []map[string]any, opts ReplayOptions) {
	t.Helper()
	if newHandler == nil {
		t.Fatalf("streamtxtest: CheckReplaySafe: nil newHandler")
	}
	if opts.Runs == 0 {
		opts.Runs = 20
	}
	if opts.Rate == 0 {
		opts.Rate = 0.5
	}
	if opts.Seed == 0 {
		opts.Seed = rand.Uint64() >> 16 // short enough to copy
	}
	if opts.KeyField == "" {
		opts.KeyField = "key"
	}
	if opts.Topic != "" {
		for i, in := range inputs {
			if k, ok := in[opts.KeyField]; !ok || fmt.Sprint(k) == "" {
				t.Fatalf("streamtxtest: CheckReplaySafe: input #%d (%s) has no field %q: on a topic each input needs its entry key (ReplayOptions.KeyField)",
					i+1, fields(in), opts.KeyField)
			}
		}
	}
	seeds := make([]uint64, opts.Runs)
	for i := range seeds {
		seeds[i] = opts.Seed + uint64(i)
	}
	if s := os.Getenv(ReplaySeedEnv); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("streamtxtest: %s=%q: %v", ReplaySeedEnv, s, err)
		}
		seeds = []uint64{seed}
	}

	clean := replayRun(t, newHandler, inputs, opts, nil)
	if len(clean.ignored) > 10 {
		clean.ignored = append(clean.ignored[:10], fmt.Sprintf("… and %d more", len(clean.ignored)-10))
	}
	if len(clean.ignored) > 0 {
		t.Fatalf("streamtxtest: the handler is not replay-safe (run without faults):\n  %s\n"+
			"The consumer fails such a call anyway, dropping its state changes and publishes: return the error of tx.Publish.",
			strings.Join(clean.ignored, "\n  "))
	}
	for _, seed := range seeds {
		got := replayRun(t, newHandler, inputs, opts, &seed)
		rerun := rerunHint(t, seed)
		if len(got.ignored) > 0 {
			t.Fatalf("streamtxtest: the handler is not replay-safe (faults with seed %d):\n  %s\n%s",
				seed, strings.Join(got.ignored, "\n  "), rerun)
		}
		if d := lineDiff(clean.lines, got.lines); d != "" {
			t.Fatalf("streamtxtest: the handler is not replay-safe: with faults (seed %d) it left other results than without.\n"+
				"faults injected:\n%s\nresults (- without faults, + with faults):\n%s\n%s",
				seed, injections(got.injected), d, rerun)
		}
	}
}

func rerunHint(t testing.TB, seed uint64) string {
	parts := strings.Split(t.Name(), "/")
	return fmt.Sprintf("re-run this seed alone: %s=%d go test -run '^%s$' <package>", ReplaySeedEnv, seed, strings.Join(parts, "$/^"))
}

func injections(in []Injection) string {
	if len(in) == 0 {
		return "  none"
	}
	var b strings.Builder
	for i, x := range in {
		if i == 30 {
			fmt.Fprintf(&b, "  … and %d more\n", len(in)-i)
			break
		}
		b.WriteString("  " + x.String() + "\n")
	}
	return strings.TrimRight(b.String(), "\n")
}

type runResult struct {
	lines    []string
	injected []Injection
	ignored  []string
}

func replayRun(t testing.TB, newHandler func() streamtx.Handler, inputs []map[string]any, opts ReplayOptions, seed *uint64) runResult {
	t.Helper()
	tt := newTester(t, newHandler(), opts.Options)
	defer tt.Close()
	if seed != nil {
		tt.label = fmt.Sprintf(" (CheckReplaySafe, faults with seed %d; %s)", *seed, rerunHint(t, *seed))
		tt.Faults(Faults{Seed: *seed, Rate: opts.Rate, Kinds: opts.Kinds})
	} else {
		tt.label = " (CheckReplaySafe, run without faults)"
	}
	for _, in := range inputs {
		if tt.topic != nil {
			tt.SendKeyed(fmt.Sprint(in[opts.KeyField]), in)
		} else {
			tt.Send(in)
		}
		tt.Drain()
	}
	tt.mu.Lock()
	res := runResult{injected: tt.faults.injected, ignored: tt.faults.ignored}
	tt.mu.Unlock()
	res.lines = tt.results()
	return res
}

// results describes what the handler left in Redis, without what varies
// between runs (entry IDs, versions, times, delivery counts).
func (tt *Tester) results() []string {
	tt.t.Helper()
	ctx := context.Background()
	var lines []string
	// State records, of every partition on a topic.
	for _, src := range tt.srcs {
		base := src.space.Base()
		var stateKeys []string
		for _, kind := range []string{"state:", "kstate:"} {
			stateKeys = append(stateKeys, tt.scan(ctx, globEscape(base+kind)+"*")...)
		}
		sort.Strings(stateKeys)
		where := ""
		if src.p >= 0 {
			where = fmt.Sprintf("partition %d ", src.p)
		}
		for _, k := range stateKeys {
			rec, err := record.Load(ctx, tt.admin, k)
			if err != nil {
				lines = append(lines, fmt.Sprintf("%s%s: %v", where, strings.TrimPrefix(k, base), err))
				continue
			}
			lines = append(lines, fmt.Sprintf("%s%s = %s", where, strings.TrimPrefix(k, base), readable(rec.Data)))
		}
	}
	// Streams other than the source and streamtx's own keys.
	pattern := "*"
	if tt.prefix != "" {
		pattern = globEscape(tt.prefix) + "*"
	}
	var streams []string
	for _, k := range tt.scan(ctx, pattern) {
		if tt.source(k) != nil || strings.HasPrefix(k, "stx:") {
			continue
		}
		if typ, err := tt.admin.Type(ctx, k).Result(); err == nil && typ == "stream" {
			streams = append(streams, k)
		}
	}
	sort.Strings(streams)
	for _, s := range streams {
		ms, err := tt.admin.XRange(ctx, s, "-", "+").Result()
		if err != nil {
			tt.t.Fatalf("streamtxtest: read %q: %v", s, err)
		}
		// The prefix also stands in the hash tag of a topic's partitions
		// ("<prefix>out:{<prefix>out.p1}"), and differs from run to run.
		name := s
		if tt.prefix != "" {
			name = strings.ReplaceAll(s, tt.prefix, "")
		}
		for i, m := range ms {
			lines = append(lines, fmt.Sprintf("stream %s #%d: %s", name, i+1, fields(m.Values)))
		}
	}
	// Dead letters.
	for i, d := range tt.DeadLetters() {
		lines = append(lines, fmt.Sprintf("dead letter #%d: %s error=%q", i+1, fields(d.Values), d.Error))
	}
	return lines
}

func (tt *Tester) scan(ctx context.Context, pattern string) []string {
	var out []string
	iter := tt.admin.Scan(ctx, 0, pattern, 500).Iterator()
	for iter.Next(ctx) {
		out = append(out, iter.Val())
	}
	if err := iter.Err(); err != nil {
		tt.t.Fatalf("streamtxtest: SCAN %s: %v", pattern, err)
	}
	return out
}

// readable renders an encoded state value: JSON as it is, msgpack as JSON,
// anything else quoted.
func readable(data []byte) string {
	if len(data) == 0 {
		return "(absent)"
	}
	if json.Valid(data) {
		var b bytes.Buffer
		if json.Compact(&b, data) == nil {
			return b.String()
		}
	}
	var v any
	if err := msgpack.Unmarshal(data, &v); err == nil {
		if b, err := json.Marshal(v); err == nil {
			return string(b)
		}
		return fmt.Sprintf("%v", v)
	}
	return strconv.Quote(string(data))
}

// lineDiff returns a diff of a and b ("- " lines only in a, "+ " only in
// b, "  " in both, at most 3 around each change), or "" when they are
// equal.
func lineDiff(a, b []string) string {
	if slicesEqual(a, b) {
		return ""
	}
	// Longest common subsequence, by dynamic programming: results are small.
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type line struct {
		op   byte
		text string
	}
	var ops []line
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			ops = append(ops, line{' ', a[i]})
			i++
			j++
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, line{'-', a[i]})
			i++
		default:
			ops = append(ops, line{'+', b[j]})
			j++
		}
	}
	const context = 3
	var out strings.Builder
	last := -1
	for k, l := range ops {
		near := false
		for d := max(0, k-context); d <= min(len(ops)-1, k+context); d++ {
			if ops[d].op != ' ' {
				near = true
				break
			}
		}
		if !near {
			continue
		}
		if last >= 0 && k > last+1 {
			out.WriteString("  …\n")
		}
		last = k
		out.WriteByte(l.op)
		out.WriteString(" " + l.text + "\n")
	}
	return strings.TrimRight(out.String(), "\n")
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
