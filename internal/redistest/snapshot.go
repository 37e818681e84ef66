package redistest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Snapshot is what Redis means by a set of keys, for tests that check that
// a refused or failed script wrote nothing: one line per key (its type, its
// value and whether it expires), and for a stream one line per entry, per
// group (last-delivered ID and entries-read), per consumer (its pending
// count) and per pending entry (owner and delivery count), plus the stream's
// ID counters (last generated ID, max deleted ID, entries added).
//
// It leaves out what changes without a write: times (idle, seen-time,
// active-time, delivery time, the remaining TTL), derived figures (lag) and
// encodings. A DUMP is not a snapshot: since Redis 7.2 an XAUTOCLAIM or
// XCLAIM that claims nothing still updates the consumer's seen-time, which
// changes the stream's DUMP although no entry, pending entry or group
// position changed.
//
// The lines are keyed so that a [Snapshot.Diff] names what changed, e.g.
// "s group g pending 1-1" or "s group g consumer c".
type Snapshot map[string]string

// snapshotTimeout bounds the reads of one TakeSnapshot.
const snapshotTimeout = 10 * time.Second

// TakeSnapshot returns the Snapshot of the keys matching each glob pattern
// (as in SCAN MATCH), on every master of a cluster. It fails the test on a
// read error or a key of a type it cannot describe.
func TakeSnapshot(t testing.TB, rdb redis.UniversalClient, patterns ...string) Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
	defer cancel()
	var keys []string
	for _, pattern := range patterns {
		err := scanKeys(ctx, rdb, pattern, func(k string) { keys = append(keys, k) })
		if err != nil {
			t.Fatalf("redistest: snapshot: SCAN %q: %v", pattern, err)
		}
	}
	slices.Sort(keys)
	keys = slices.Compact(keys) // patterns may overlap
	snap := make(Snapshot)
	for _, k := range keys {
		if err := snap.add(ctx, rdb, k); err != nil {
			t.Fatalf("redistest: snapshot of %q: %v", k, err)
		}
	}
	return snap
}

// Diff returns what differs from s to after, sorted: "gone: <line key>",
// "new: <line key>" and "changed: <line key>: <old> -> <new>". It is empty
// when nothing Redis means changed.
func (s Snapshot) Diff(after Snapshot) []string {
	var diff []string
	for k, v := range s {
		if w, ok := after[k]; !ok {
			diff = append(diff, "gone: "+k)
		} else if w != v {
			diff = append(diff, fmt.Sprintf("changed: %s: %q -> %q", k, v, w))
		}
	}
	for k := range after {
		if _, ok := s[k]; !ok {
			diff = append(diff, "new: "+k)
		}
	}
	sort.Strings(diff)
	return diff
}

// scanKeys calls f with every key matching pattern, on every master of a
// cluster.
func scanKeys(ctx context.Context, rdb redis.UniversalClient, pattern string, f func(string)) error {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex // ForEachMaster calls the masters concurrently
		var keys []string
		err := cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return scanKeys(ctx, node, pattern, func(k string) {
				mu.Lock()
				keys = append(keys, k)
				mu.Unlock()
			})
		})
		for _, k := range keys {
			f(k)
		}
		return err
	}
	iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		f(iter.Val())
	}
	return iter.Err()
}

// add adds the lines of key k. A key deleted since the SCAN adds nothing.
func (s Snapshot) add(ctx context.Context, rdb redis.UniversalClient, k string) error {
	typ, err := rdb.Type(ctx, k).Result()
	if err != nil || typ == "none" {
		return err
	}
	ttl, err := rdb.PTTL(ctx, k).Result()
	if err != nil {
		return err
	}
	head := typ
	if ttl >= 0 { // -1 (as a Duration): no expiry
		head += " expires"
	}
	var val string
	switch typ {
	case "string":
		val, err = rdb.Get(ctx, k).Result()
	case "list":
		var l []string
		l, err = rdb.LRange(ctx, k, 0, -1).Result()
		val = quoteAll(l)
	case "set":
		var m []string
		m, err = rdb.SMembers(ctx, k).Result()
		slices.Sort(m)
		val = quoteAll(m)
	case "hash":
		var h map[string]string
		h, err = rdb.HGetAll(ctx, k).Result()
		val = quoteMap(h)
	case "zset":
		var z []redis.Z
		z, err = rdb.ZRangeWithScores(ctx, k, 0, -1).Result()
		var b strings.Builder
		for _, m := range z {
			fmt.Fprintf(&b, "%q=%s ", m.Member, strconv.FormatFloat(m.Score, 'g', -1, 64))
		}
		val = b.String()
	case "stream":
		val, err = s.addStream(ctx, rdb, k)
	default:
		return fmt.Errorf("type %q: the snapshot cannot describe it", typ)
	}
	if err != nil {
		return err
	}
	s[k] = head + " " + val
	return nil
}

// addStream adds a line per entry, group, consumer and pending entry of
// stream k, and returns the stream's own line: its ID counters.
func (s Snapshot) addStream(ctx context.Context, rdb redis.UniversalClient, k string) (string, error) {
	// COUNT 0: every entry and pending entry (the default is 10).
	cmd := redis.NewXInfoStreamFullCmd(ctx, "xinfo", "stream", k, "full", "count", 0)
	cmd.SetFirstKeyPos(2)
	if err := rdb.Process(ctx, cmd); err != nil {
		return "", err
	}
	info := cmd.Val()
	for _, m := range info.Entries {
		s[k+" entry "+m.ID] = quoteAny(m.Values)
	}
	for _, g := range info.Groups {
		gk := k + " group " + g.Name
		s[gk] = fmt.Sprintf("last-delivered-id=%s entries-read=%d", g.LastDeliveredID, g.EntriesRead)
		for _, p := range g.Pending {
			s[gk+" pending "+p.ID] = fmt.Sprintf("consumer=%q deliveries=%d", p.Consumer, p.DeliveryCount)
		}
		for _, c := range g.Consumers {
			s[gk+" consumer "+c.Name] = fmt.Sprintf("pending=%d", c.PelCount)
		}
	}
	return fmt.Sprintf("length=%d last-generated-id=%s max-deleted-entry-id=%s entries-added=%d",
		info.Length, info.LastGeneratedID, info.MaxDeletedEntryID, info.EntriesAdded), nil
}

func quoteAll(ss []string) string {
	var b strings.Builder
	for _, v := range ss {
		fmt.Fprintf(&b, "%q ", v)
	}
	return b.String()
}

func quoteMap(m map[string]string) string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	var b strings.Builder
	for _, k := range ks {
		fmt.Fprintf(&b, "%q=%q ", k, m[k])
	}
	return b.String()
}

// quoteAny renders a stream entry's fields, sorted (go-redis gives them as a
// map; an entry never changes in place, so its ID and fields suffice).
func quoteAny(m map[string]any) string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	var b strings.Builder
	for _, k := range ks {
		fmt.Fprintf(&b, "%q=%q ", k, fmt.Sprint(m[k]))
	}
	return b.String()
}
