package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/msgp"
	"github.com/streamtx/streamtx/internal/record"
)

// check verifies, after a run, that every entry was acknowledged, that one
// entry was published per entry (none for raw-ack), and that the counters
// of the stateful scenarios add up to n. It returns "ok" or what is wrong.
func (b *bench) check(ctx context.Context, scenario, src, out string, n int) string {
	var problems []string
	pending, err := b.rdb.XPending(ctx, src, group).Result()
	if err != nil {
		return "ERROR: XPENDING: " + err.Error()
	}
	if pending.Count != 0 {
		problems = append(problems, fmt.Sprintf("%d still pending", pending.Count))
	}
	if out != "" {
		want := int64(n)
		if scenario == rawACK {
			want = 0
		}
		published, err := b.rdb.XLen(ctx, out).Result()
		if err != nil {
			return "ERROR: XLEN: " + err.Error()
		}
		if published != want {
			problems = append(problems, fmt.Sprintf("%d published, want %d", published, want))
		}
	}
	if scenario == stxStateful || scenario == stxKeyed {
		sum, err := b.stateSum(ctx, src, scenario == stxKeyed)
		if err != nil {
			return "ERROR: reading state: " + err.Error()
		}
		if sum != int64(n) {
			problems = append(problems, fmt.Sprintf("counters add up to %d, want %d", sum, n))
		}
	}
	if len(problems) > 0 {
		return "FAIL: " + strings.Join(problems, "; ")
	}
	return "ok"
}

// stateSum adds up the committed counters of the run on src: the one
// Stateful record, or the numKeys Keyed records.
func (b *bench) stateSum(ctx context.Context, src string, keyed bool) (int64, error) {
	space, err := keys.NewSpace(src, group)
	if err != nil {
		return 0, err
	}
	names := []string{space.State(stateName)}
	if keyed {
		names = names[:0]
		for i := range numKeys {
			names = append(names, space.KeyedState(stateName, keyName(i)))
		}
	}
	recs, err := record.LoadMany(ctx, b.rdb, names)
	if err != nil {
		return 0, err
	}
	var sum int64
	for i, rec := range recs {
		v, err := msgp.Decode[counter](rec.Data)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", names[i], err)
		}
		sum += v.N
	}
	return sum, nil
}
