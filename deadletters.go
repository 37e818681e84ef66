package streamtx

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/rdb"
)

// DeadLetter is an entry that failed for good, as stored in a dead-letter
// stream: the original fields plus where it came from and why it failed.
type DeadLetter struct {
	ID         string            // ID in the dead-letter stream
	Stream     string            // source stream
	SourceID   string            // ID in the source stream
	Group      string            // group that gave up on it
	Consumer   string            // consumer that moved it
	Error      string            // the last error
	Deliveries int64             // deliveries before it was moved
	Time       time.Time         // when it was moved (the consumer's clock)
	Values     map[string]string // the original fields
}

// DeadLetterStreamFor returns the default dead-letter stream of stream and
// group (what a Consumer uses when Config.DeadLetterStream is empty).
func DeadLetterStreamFor(stream, group string) (string, error) {
	sp, err := keys.NewSpace(stream, group)
	if err != nil {
		return "", err
	}
	return sp.DeadLetters(), nil
}

// ListDeadLetters returns up to count dead letters of dlq from start ("-" or
// "" for the beginning), oldest first, and the start of the next page ("" at
// the end). count <= 0 means 100.
func ListDeadLetters(ctx context.Context, client redis.UniversalClient, dlq, start string, count int64) ([]DeadLetter, string, error) {
	if count <= 0 {
		count = 100
	}
	if start == "" {
		start = "-"
	}
	ms, err := client.XRangeN(ctx, dlq, start, "+", count+1).Result()
	if err != nil {
		return nil, "", fmt.Errorf("streamtx: list dead letters of %q: %w", dlq, err)
	}
	next := ""
	if int64(len(ms)) > count {
		next, ms = ms[count].ID, ms[:count]
	}
	out := make([]DeadLetter, len(ms))
	for i, m := range ms {
		out[i] = parseDeadLetter(m)
	}
	return out, next, nil
}

func parseDeadLetter(m redis.XMessage) DeadLetter {
	d := DeadLetter{ID: m.ID, Values: make(map[string]string, len(m.Values))}
	for k, v := range m.Values {
		s, _ := v.(string)
		if !strings.HasPrefix(k, metaPrefix) {
			d.Values[k] = s
			continue
		}
		switch k {
		case "stx.stream":
			d.Stream = s
		case "stx.id":
			d.SourceID = s
		case "stx.group":
			d.Group = s
		case "stx.consumer":
			d.Consumer = s
		case "stx.error":
			d.Error = s
		case "stx.deliveries":
			d.Deliveries, _ = strconv.ParseInt(s, 10, 64)
		case "stx.time":
			if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
				d.Time = time.UnixMilli(ms)
			}
		default:
			if strings.HasPrefix(k, metaPrefix+metaPrefix) {
				d.Values[k[len(metaPrefix):]] = s
			}
		}
	}
	return d
}

// ReplayResult says what ReplayDeadLetters did with each ID.
type ReplayResult struct {
	// Replayed maps each replayed dead-letter ID to the entry's new ID in
	// its source stream.
	Replayed map[string]string
	// Missing lists IDs not in the dead-letter stream (replayed or purged
	// already): replaying twice appends once.
	Missing []string
}

// ReplayDeadLetters moves the dead letters with the given IDs (all of them
// when ids is empty) back into their source streams. Each move is atomic:
// the entry is appended to the source stream with its original fields and
// deleted from dlq in one script, so a dead letter is replayed at most once
// however often this is called or retried.
//
// The replayed entry carries stx.replay.group (the group that gave up on it)
// and stx.replay.of (its first ID); consumers of other groups of the stream
// acknowledge it without running their handler, so it is processed again
// only by the group that failed it.
//
// It also carries a trace context (see Tracing): with a Tracing in ctx
// (WithTracing) and a span in ctx, ctx's; otherwise the dead letter's (the
// context of the span that moved it, when its consumer had a Tracing), or
// the one the entry had before it failed.
func ReplayDeadLetters(ctx context.Context, client redis.UniversalClient, dlq string, ids ...string) (ReplayResult, error) {
	res := ReplayResult{Replayed: map[string]string{}}
	all := len(ids) == 0
	start := "-"
	scripts, err := luaScripts()
	if err != nil {
		return res, err
	}
	var trace []string
	if t := tracingFrom(ctx); t != nil {
		trace = traceFields(t, ctx)
	}
	for {
		var page []DeadLetter
		if all {
			var err error
			page, start, err = ListDeadLetters(ctx, client, dlq, start, 100)
			if err != nil {
				return res, err
			}
		} else {
			for _, id := range ids {
				ms, err := client.XRange(ctx, dlq, id, id).Result()
				if err != nil {
					return res, fmt.Errorf("streamtx: replay %s from %q: %w", id, dlq, err)
				}
				if len(ms) == 0 {
					res.Missing = append(res.Missing, id)
					continue
				}
				page = append(page, parseDeadLetter(ms[0]))
			}
		}
		bySource := map[string][]any{}
		for _, d := range page {
			if d.Stream == "" {
				return res, fmt.Errorf("streamtx: dead letter %s in %q has no stx.stream", d.ID, dlq)
			}
			args := bySource[d.Stream]
			if args == nil {
				args = append(args, len(trace)/2)
				for _, f := range trace {
					args = append(args, f)
				}
			}
			bySource[d.Stream] = append(args, d.ID)
		}
		for src, batch := range bySource {
			if _, ok := client.(*redis.ClusterClient); ok && keys.Slot(src) != keys.Slot(dlq) {
				return res, fmt.Errorf("streamtx: replay into %q: %w", src, ErrCrossSlot)
			}
			reply, err := rdb.Run(ctx, client, scripts.Replay, []string{dlq, src}, batch...)
			if err != nil {
				return res, fmt.Errorf("streamtx: replay into %q: %w", src, err)
			}
			if err := parseReplay(reply, &res); err != nil {
				return res, err
			}
		}
		if !all || start == "" {
			return res, nil
		}
	}
}

func parseReplay(v any, res *ReplayResult) error {
	a, ok := v.([]any)
	if !ok || len(a) != 3 {
		return errors.New("streamtx: unexpected replay reply")
	}
	done, _ := a[0].([]any)
	for _, x := range done {
		pair, _ := x.([]any)
		if len(pair) != 2 {
			return errors.New("streamtx: unexpected replay reply")
		}
		from, _ := pair[0].(string)
		to, _ := pair[1].(string)
		res.Replayed[from] = to
	}
	missing, _ := a[1].([]any)
	for _, x := range missing {
		s, _ := x.(string)
		res.Missing = append(res.Missing, s)
	}
	if bad, _ := a[2].([]any); len(bad) > 0 {
		return fmt.Errorf("streamtx: %d dead letters name another source stream", len(bad))
	}
	return nil
}

// PurgeDeadLetters deletes the dead letters with the given IDs, or every
// dead letter when ids is empty (the stream itself is kept). It returns how
// many were deleted.
func PurgeDeadLetters(ctx context.Context, client redis.UniversalClient, dlq string, ids ...string) (int64, error) {
	var n int64
	var err error
	if len(ids) == 0 {
		n, err = client.XTrimMaxLen(ctx, dlq, 0).Result()
	} else {
		n, err = client.XDel(ctx, dlq, ids...).Result()
	}
	if err != nil {
		return 0, fmt.Errorf("streamtx: purge dead letters of %q: %w", dlq, err)
	}
	return n, nil
}
