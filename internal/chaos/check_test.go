//go:build linux

package chaos

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
)

// verdict is what the invariant checks of one group found.
type verdict struct {
	group       string
	published   int // entries in the output stream
	duplicates  int // output entries beyond the first for one source entry
	losses      int // source entries with no output entry and no dead letter
	phantoms    int // output entries whose source is not a source entry
	deadLetters int
	inversions  int      // outputs of a key after an output of a later entry of that key (topics)
	accounted   int      // source entries published or dead-lettered
	violations  []string // the first ones
	nviolations int      // all of them
}

func (v *verdict) violate(format string, args ...any) {
	const maxShown = 20
	v.nviolations++
	if len(v.violations) == maxShown {
		v.violations = append(v.violations, "… (more violations not shown)")
	}
	if len(v.violations) < maxShown {
		v.violations = append(v.violations, fmt.Sprintf(format, args...))
	}
}

// source is the preloaded source stream.
type source struct {
	stream string
	ids    []string          // in stream order
	key    map[string]string // entry ID -> field k
	count  map[string]int    // k -> number of entries with that key
}

// published is one entry of an output stream.
type published struct {
	id, src, k, by, d string
	n                 int
}

func (p published) String() string {
	return fmt.Sprintf("%s{src=%s k=%s n=%d by=%s d=%s}", p.id, p.src, p.k, p.n, p.by, p.d)
}

// readStream returns every entry of stream, in order.
func readStream(ctx context.Context, rdb redis.Cmdable, stream string) ([]redis.XMessage, error) {
	var all []redis.XMessage
	start := "-"
	for {
		msgs, err := rdb.XRangeN(ctx, stream, start, "+", 1000).Result()
		if err != nil {
			return nil, err
		}
		all = append(all, msgs...)
		if len(msgs) < 1000 {
			return all, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

func readPublished(ctx context.Context, rdb redis.Cmdable, stream string) ([]published, error) {
	msgs, err := readStream(ctx, rdb, stream)
	if err != nil {
		return nil, err
	}
	out := make([]published, len(msgs))
	for i, m := range msgs {
		str := func(f string) string { s, _ := m.Values[f].(string); return s }
		n, _ := strconv.Atoi(str("n"))
		out[i] = published{id: m.ID, src: str("src"), k: str("k"), by: str("by"), d: str("d"), n: n}
	}
	return out, nil
}

// checkGroup checks the invariants of one group's output stream, its dead
// letters and its state. keyed selects the per-key counter of handlerKeyed.
// Every dead letter is a violation.
func checkGroup(ctx context.Context, rdb *redis.Client, src *source, group, out string, keyed bool) *verdict {
	return checkGroupDead(ctx, rdb, src, group, out, keyed, nil)
}

// checkGroupDead is checkGroup for a run whose handler kills its process on
// the entries in guilty: each of them must be dead-lettered (once), and the
// state counts the others only. A dead letter of any other entry is a
// violation.
func checkGroupDead(ctx context.Context, rdb *redis.Client, src *source, group, out string, keyed bool, guilty map[string]bool) *verdict {
	v := &verdict{group: group}
	pubs, err := readPublished(ctx, rdb, out)
	if err != nil {
		v.violate("read %s: %v", out, err)
		return v
	}
	v.published = len(pubs)

	// Dead letters.
	sp, err := keys.NewSpace(src.stream, group)
	if err != nil {
		v.violate("%v", err)
		return v
	}
	dlq, err := readStream(ctx, rdb, sp.DeadLetters())
	if err != nil {
		v.violate("read dead letters: %v", err)
		return v
	}
	dead := make(map[string]int)
	for _, m := range dlq {
		id, _ := m.Values["stx.id"].(string)
		dead[id]++
		if !guilty[id] {
			v.violate("dead letter %s for source %s: %v", m.ID, id, m.Values["stx.error"])
		}
	}
	for id := range guilty {
		if dead[id] == 0 {
			v.violate("guilty entry %s (its handler kills the process) was not dead-lettered", id)
		}
	}
	v.deadLetters = len(dlq)

	// (1) Every source entry exactly once, downstream or dead-lettered.
	bySrc := make(map[string][]published, len(pubs))
	for _, p := range pubs {
		bySrc[p.src] = append(bySrc[p.src], p)
	}
	isSrc := make(map[string]bool, len(src.ids))
	for _, id := range src.ids {
		isSrc[id] = true
		got := len(bySrc[id]) + dead[id]
		switch {
		case got == 0:
			v.losses++
			v.violate("lost: source %s (k=%s) has no output and no dead letter", id, src.key[id])
		case got > 1:
			v.duplicates += got - 1
			v.violate("duplicate: source %s appears %d times: %v (dead letters %d)", id, got, bySrc[id], dead[id])
		}
	}
	for s, ps := range bySrc {
		if !isSrc[s] {
			v.phantoms += len(ps)
			v.violate("phantom: output %v has no source entry", ps)
		}
	}

	// (2) The published counters are 1..count in output order, and (3) the
	// final state equals the count, last applied by the entry that
	// published the last value.
	seqs := map[string][]published{"": pubs}
	want := map[string]int{"": len(src.ids) - len(guilty)}
	if keyed {
		seqs = make(map[string][]published)
		for _, p := range pubs {
			seqs[p.k] = append(seqs[p.k], p)
		}
		want = maps.Clone(src.count)
		for id := range guilty {
			want[src.key[id]]--
		}
		for k := range seqs {
			if _, ok := want[k]; !ok {
				v.violate("output key %q is no source key", k)
			}
		}
	}
	ks := make([]string, 0, len(want))
	for k := range want {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	for _, k := range ks {
		seq := seqs[k]
		for i, p := range seq {
			if p.n != i+1 {
				v.violate("counter%s: output #%d is %v, want n=%d (previous %v)", keyLabel(k), i+1, p, i+1, prev(seq, i))
				break
			}
		}
		if len(seq) != want[k] {
			v.violate("counter%s: %d outputs, want %d", keyLabel(k), len(seq), want[k])
		}
		var snap streamtx.Snapshot[counterState]
		if keyed {
			snap, err = streamtx.ReadKeyedState[counterState](ctx, rdb, src.stream, group, stateName, k)
		} else {
			snap, err = streamtx.ReadState[counterState](ctx, rdb, src.stream, group, stateName)
		}
		switch {
		case err != nil:
			v.violate("state%s: %v", keyLabel(k), err)
		case snap.Value.N != want[k]:
			v.violate("state%s: N=%d (version %d, last %s), want %d", keyLabel(k), snap.Value.N, snap.Version, snap.LastID, want[k])
		case len(seq) > 0 && snap.LastID != seq[len(seq)-1].src:
			v.violate("state%s: last entry %s, but the last output %v came from another", keyLabel(k), snap.LastID, seq[len(seq)-1])
		}
	}

	// (4) Successes and dead letters account for every entry.
	var succeeded, deadLettered int
	for _, id := range src.ids {
		if len(bySrc[id]) > 0 {
			succeeded++
		}
		if dead[id] > 0 {
			deadLettered++
		}
	}
	v.accounted = succeeded + deadLettered
	if v.accounted != len(src.ids) || len(dead) != deadLettered {
		v.violate("accounting: %d published + %d dead-lettered (%d distinct dead-letter sources) != %d entries",
			succeeded, deadLettered, len(dead), len(src.ids))
	}
	return v
}

func keyLabel(k string) string {
	if k == "" {
		return ""
	}
	return "[k=" + k + "]"
}

func prev(seq []published, i int) string {
	if i == 0 {
		return "none"
	}
	return seq[i-1].String()
}

// groupStatus is the drain condition of a group, as a string for logs.
func groupStatus(ctx context.Context, rdb *redis.Client, stream, lastID string, groups ...string) (bool, string) {
	infos, err := rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		return false, err.Error()
	}
	var b strings.Builder
	drained := true
	for _, g := range groups {
		found := false
		for _, in := range infos {
			if in.Name != g {
				continue
			}
			found = true
			fmt.Fprintf(&b, "%s: pending=%d last-delivered=%s consumers=%d; ", g, in.Pending, in.LastDeliveredID, in.Consumers)
			if in.Pending != 0 || in.LastDeliveredID != lastID {
				drained = false
			}
		}
		if !found {
			fmt.Fprintf(&b, "%s: missing; ", g)
			drained = false
		}
	}
	return drained, strings.TrimSuffix(b.String(), "; ")
}
