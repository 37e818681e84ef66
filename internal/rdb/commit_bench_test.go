package rdb_test

import (
	"context"
	"os"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/msgp"
	"github.com/streamtx/streamtx/internal/rdb"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/internal/txnengine"
)

// benchBatch is the number of entries in one benchmarked commit.
const benchBatch = 100

const benchGroup = "g"

type benchCounter struct{ N int64 }

// benchNewCommit returns a commit of the given entry IDs with nStates state
// records (distinct keys) and one three-field publish per entry, all to out.
// The records are expected at version with the given token (the last
// commit's; "" for none).
func benchNewCommit(b *testing.B, space keys.Space, out string, ids []string, nStates int, version int64, token string) *rdb.Commit {
	b.Helper()
	c := &rdb.Commit{Stream: space.Stream, Offsets: space.Offsets(), Group: benchGroup, Consumer: "c0"}
	for i, id := range ids {
		c.IDs = append(c.IDs, id)
		c.Deliveries = append(c.Deliveries, 1)
		c.Publishes = append(c.Publishes, txnengine.Publish{
			Stream: out,
			Fields: []string{"k", "k" + strconv.Itoa(i), "src", id, "v", strconv.Itoa(i)},
		})
	}
	data, err := msgp.Encode(&benchCounter{N: 123456})
	if err != nil {
		b.Fatal(err)
	}
	for i := range nStates {
		key := space.State("count")
		if nStates > 1 {
			key = space.KeyedState("count", "k"+strconv.Itoa(i))
		}
		c.States = append(c.States, txnengine.Write{Key: key, Version: version, Token: token, Data: data, LastID: ids[len(ids)-1]})
	}
	return c
}

func benchIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "1700000000000-" + strconv.Itoa(i)
	}
	return ids
}

// BenchmarkCommitBuild measures building the KEYS and ARGV of a commit of
// 100 entries with one state record and 100 publishes.
func BenchmarkCommitBuild(b *testing.B) {
	space, err := keys.NewSpace("bench:src", benchGroup)
	if err != nil {
		b.Fatal(err)
	}
	c := benchNewCommit(b, space, "bench:out", benchIDs(benchBatch), 1, 7, "")
	b.ReportAllocs()
	for b.Loop() {
		keys, args, err := c.Build()
		if err != nil {
			b.Fatal(err)
		}
		if len(keys) != 4 || len(args) == 0 {
			b.Fatalf("keys %d, args %d", len(keys), len(args))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchBatch), "ns/entry")
}

// BenchmarkCommitScript runs commit.lua end to end on Redis for a batch of
// pending entries per iteration (made pending outside the timer), with one
// three-field publish per entry and no, one or one-per-entry state records.
// It needs REDIS_ADDR.
func BenchmarkCommitScript(b *testing.B) {
	for _, bc := range []struct {
		name           string
		batch, nStates int
	}{
		{"batch100/stateless", benchBatch, 0},
		{"batch100/1state", benchBatch, 1},
		{"batch100/100states", benchBatch, benchBatch},
		{"batch1/1state", 1, 1},
	} {
		b.Run(bc.name, func(b *testing.B) { benchCommitScript(b, bc.batch, bc.nStates) })
	}
}

// BenchmarkPipelineBaseline is what an at-least-once consumer does instead of
// the commit script: one pipeline of an XADD per entry and one XACK, for the
// same pending entries and publishes. It needs REDIS_ADDR.
func BenchmarkPipelineBaseline(b *testing.B) {
	for _, batch := range []int{benchBatch, 1} {
		b.Run("batch"+strconv.Itoa(batch), func(b *testing.B) {
			ctx, client, src, out, _ := benchSetup(b)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				ids := benchPending(b, ctx, client, src, out, batch)
				b.StartTimer()

				pipe := client.Pipeline()
				for j, id := range ids {
					pipe.XAdd(ctx, &redis.XAddArgs{Stream: out, Values: []any{"k", "k" + strconv.Itoa(j), "src", id, "v", strconv.Itoa(j)}})
				}
				pipe.XAck(ctx, src, benchGroup, ids...)
				if _, err := pipe.Exec(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/entry")
		})
	}
}

// benchSetup skips without REDIS_ADDR; otherwise it returns a client, a
// source stream with the group, an output stream and their key space.
func benchSetup(b *testing.B) (context.Context, *redis.Client, string, string, keys.Space) {
	b.Helper()
	if os.Getenv("REDIS_ADDR") == "" {
		b.Skip("set REDIS_ADDR=host:port to run this benchmark against Redis")
	}
	ctx := context.Background()
	client := redistest.Client(b)
	prefix := redistest.Prefix(b, client)
	src, out := prefix+"src", prefix+"out"
	space, err := keys.NewSpace(src, benchGroup)
	if err != nil {
		b.Fatal(err)
	}
	if err := client.XGroupCreateMkStream(ctx, src, benchGroup, "$").Err(); err != nil {
		b.Fatal(err)
	}
	return ctx, client, src, out, space
}

func benchCommitScript(b *testing.B, batch, nStates int) {
	ctx, client, src, out, space := benchSetup(b)
	scripts := scriptsFromDisk(b)
	if err := scripts.Commit.Load(ctx, client).Err(); err != nil {
		b.Fatal(err)
	}

	token := ""
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ids := benchPending(b, ctx, client, src, out, batch)
		c := benchNewCommit(b, space, out, ids, nStates, int64(i), token)
		b.StartTimer()

		if _, _, err := c.Build(); err != nil {
			b.Fatal(err)
		}
		reply, err := rdb.RunCommit(ctx, client, scripts, c)
		if err != nil {
			b.Fatal(err)
		}
		res, err := rdb.ParseResult(reply)
		if err != nil {
			b.Fatal(err)
		}
		if res.Code != rdb.CodeOK {
			b.Fatalf("commit refused: %+v", res)
		}
		token = c.Token
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/entry")
}

// benchPending empties src and out, appends n entries to src and reads them
// as consumer c0, so that they are pending with one delivery.
func benchPending(b *testing.B, ctx context.Context, client *redis.Client, src, out string, n int) []string {
	b.Helper()
	pipe := client.Pipeline()
	pipe.XTrimMaxLen(ctx, src, 0)
	pipe.XTrimMaxLen(ctx, out, 0)
	for i := range n {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: src, Values: []any{"k", "k" + strconv.Itoa(i), "v", i}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		b.Fatal(err)
	}
	res, err := client.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: benchGroup, Consumer: "c0", Streams: []string{src, ">"}, Count: int64(n), Block: -1,
	}).Result()
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, 0, n)
	for _, m := range res[0].Messages {
		ids = append(ids, m.ID)
	}
	if len(ids) != n {
		b.Fatalf("read %d pending entries, want %d", len(ids), n)
	}
	return ids
}
