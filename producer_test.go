package streamtx_test

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/faultproxy"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

// prodEnv is one producer test's Redis, key prefix and stream.
type prodEnv struct {
	t      *testing.T
	rdb    *redis.Client
	stream string
}

func newProdEnv(t *testing.T) *prodEnv {
	t.Helper()
	rdb := redistest.Client(t)
	return &prodEnv{t: t, rdb: rdb, stream: redistest.Prefix(t, rdb) + "out"}
}

func (e *prodEnv) producer(cfg streamtx.ProducerConfig) *streamtx.Producer {
	e.t.Helper()
	p, err := streamtx.NewProducer(e.rdb, cfg)
	require.NoError(e.t, err)
	return p
}

func (e *prodEnv) entries() []redis.XMessage {
	e.t.Helper()
	msgs, err := e.rdb.XRange(context.Background(), e.stream, "-", "+").Result()
	require.NoError(e.t, err)
	return msgs
}

func (e *prodEnv) record(key string) string {
	e.t.Helper()
	k, err := keys.Idempotency(e.stream, key)
	require.NoError(e.t, err)
	return k
}

// serverTime is the Redis server's clock (TIME).
func (e *prodEnv) serverTime() time.Time {
	e.t.Helper()
	now, err := e.rdb.Time(context.Background()).Result()
	require.NoError(e.t, err)
	return now
}

// requireExpiresAfter checks that key expires window after a moment of the
// server's clock between before and after (TIME read around the write that
// set it). SET PX adds the window to the server's millisecond clock, which
// TIME reads too, so the bounds are exact, with no margin for the time the
// test takes.
func (e *prodEnv) requireExpiresAfter(key string, window time.Duration, before, after time.Time) {
	e.t.Helper()
	exp, err := e.rdb.PExpireTime(context.Background(), key).Result()
	require.NoError(e.t, err)
	require.Positive(e.t, exp, "%s has an expiry (PEXPIRETIME %d)", key, exp)
	at := exp.Milliseconds() - window.Milliseconds()
	require.True(e.t, before.UnixMilli() <= at && at <= after.UnixMilli(),
		"%s expires %v after %v, not %v after a moment in [%v, %v]", key, window, time.UnixMilli(at), window, before, after)
}

func TestProducerSameKeyAppendsOnce(t *testing.T) {
	t.Parallel()
	e := newProdEnv(t)
	ctx := context.Background()
	p := e.producer(streamtx.ProducerConfig{})

	before := e.serverTime()
	id1, err := p.Publish(ctx, e.stream, map[string]any{"n": 1}, streamtx.WithIdempotencyKey("k1"))
	require.NoError(t, err)
	after := e.serverTime()
	id2, err := p.Publish(ctx, e.stream, map[string]any{"n": 2}, streamtx.WithIdempotencyKey("k1"))
	require.NoError(t, err)
	assert.Equal(t, id1, id2, "the duplicate returns the first entry's ID")

	msgs := e.entries()
	require.Len(t, msgs, 1)
	assert.Equal(t, id1, msgs[0].ID)
	assert.Equal(t, map[string]any{"n": "1"}, msgs[0].Values, "the first publish's values")

	// The record holds the ID, expires after the default window (24h), and
	// lives in the stream's slot.
	rec := e.record("k1")
	assert.Equal(t, id1, e.rdb.Get(ctx, rec).Val())
	e.requireExpiresAfter(rec, 24*time.Hour, before, after)
	assert.Equal(t, keys.Slot(e.stream), keys.Slot(rec))
}

func TestProducerDifferentKeysAppendTwice(t *testing.T) {
	t.Parallel()
	e := newProdEnv(t)
	ctx := context.Background()
	p := e.producer(streamtx.ProducerConfig{})

	id1, err := p.Publish(ctx, e.stream, map[string]any{"n": 1}, streamtx.WithIdempotencyKey("a"))
	require.NoError(t, err)
	id2, err := p.Publish(ctx, e.stream, map[string]any{"n": 1}, streamtx.WithIdempotencyKey("b"))
	require.NoError(t, err)
	// Keys that escaping must keep apart.
	id3, err := p.Publish(ctx, e.stream, map[string]any{"n": 1}, streamtx.WithIdempotencyKey("a:b"))
	require.NoError(t, err)
	id4, err := p.Publish(ctx, e.stream, map[string]any{"n": 1}, streamtx.WithIdempotencyKey("a%3Ab"))
	require.NoError(t, err)
	assert.Len(t, map[string]bool{id1: true, id2: true, id3: true, id4: true}, 4)

	// The same key on another stream is another key.
	other := e.stream + "-2"
	_, err = p.Publish(ctx, other, map[string]any{"n": 1}, streamtx.WithIdempotencyKey("a"))
	require.NoError(t, err)
	assert.Equal(t, int64(1), e.rdb.XLen(ctx, other).Val(), "appended to the other stream, not deduplicated")

	// Without a key, every publish appends.
	for range 2 {
		_, err := p.Publish(ctx, e.stream, map[string]any{"n": 1})
		require.NoError(t, err)
	}
	assert.Len(t, e.entries(), 6)
}

func TestProducerKeyExpiresAfterWindow(t *testing.T) {
	t.Parallel()
	e := newProdEnv(t)
	ctx := context.Background()

	// PX is the window. It is checked on a window long enough for the
	// record to be there when its expiry is read: a 50 ms record may be
	// gone by then on a busy machine.
	before := e.serverTime()
	_, err := e.producer(streamtx.ProducerConfig{Window: 90 * time.Minute}).
		Publish(ctx, e.stream, map[string]any{"n": 0}, streamtx.WithIdempotencyKey("long"))
	require.NoError(t, err)
	after := e.serverTime()
	e.requireExpiresAfter(e.record("long"), 90*time.Minute, before, after)

	// A short window expires, and the key appends again.
	p := e.producer(streamtx.ProducerConfig{Window: 50 * time.Millisecond})
	id1, err := p.Publish(ctx, e.stream, map[string]any{"n": 1}, streamtx.WithIdempotencyKey("k"))
	require.NoError(t, err)
	rec := e.record("k")
	eventually(t, "the dedupe record to expire", func() bool {
		return e.rdb.Exists(ctx, rec).Val() == 0
	})
	id2, err := p.Publish(ctx, e.stream, map[string]any{"n": 2}, streamtx.WithIdempotencyKey("k"))
	require.NoError(t, err)
	assert.NotEqual(t, id1, id2, "after the window the key appends again")
	assert.Len(t, e.entries(), 3)
	assert.Equal(t, id2, e.rdb.Get(ctx, rec).Val(), "and is remembered anew")
}

func TestProducerRetryAcrossReconnect(t *testing.T) {
	t.Parallel()
	e := newProdEnv(t)
	ctx := context.Background()
	addr := redistest.Addr(t)

	c1 := redis.NewClient(&redis.Options{Addr: addr})
	p1, err := streamtx.NewProducer(c1, streamtx.ProducerConfig{})
	require.NoError(t, err)
	id1, err := p1.Publish(ctx, e.stream, map[string]any{"n": 1}, streamtx.WithIdempotencyKey("order-9"))
	require.NoError(t, err)
	require.NoError(t, c1.Close())

	// A new process (client and producer) retries the same publish.
	c2 := redis.NewClient(&redis.Options{Addr: addr})
	defer c2.Close()
	p2, err := streamtx.NewProducer(c2, streamtx.ProducerConfig{})
	require.NoError(t, err)
	id2, err := p2.Publish(ctx, e.stream, map[string]any{"n": 1}, streamtx.WithIdempotencyKey("order-9"))
	require.NoError(t, err)
	assert.Equal(t, id1, id2)
	assert.Len(t, e.entries(), 1)
}

// TestProducerLostReply loses the reply of the produce script's EVALSHA: the
// script ran, the caller saw an error. Its retry with the same key returns
// the first entry's ID and appends nothing.
func TestProducerLostReply(t *testing.T) {
	t.Parallel()
	e := newProdEnv(t)
	ctx := context.Background()
	sum := sha1.Sum([]byte(luaSource(t, "produce.lua")))
	sha := hex.EncodeToString(sum[:])
	require.Equal(t, sha, e.rdb.ScriptLoad(ctx, luaSource(t, "produce.lua")).Val(), "EVALSHA hits without a NOSCRIPT round")

	proxy := faultproxy.New(t, redistest.Addr(t))
	t.Run("caller retries", func(t *testing.T) {
		// No go-redis retries: the caller sees the lost reply.
		c := redis.NewClient(&redis.Options{Addr: proxy.Addr(), MaxRetries: -1})
		defer c.Close()
		p, err := streamtx.NewProducer(c, streamtx.ProducerConfig{})
		require.NoError(t, err)

		proxy.DropReplyOnce(sha)
		_, err = p.Publish(ctx, e.stream, map[string]any{"n": 1}, streamtx.WithIdempotencyKey("k1"))
		require.Error(t, err, "the reply was lost")
		require.Equal(t, 1, proxy.Fired())
		msgs := e.entries()
		require.Len(t, msgs, 1, "yet the script ran")

		id, err := p.Publish(ctx, e.stream, map[string]any{"n": 1}, streamtx.WithIdempotencyKey("k1"))
		require.NoError(t, err)
		assert.Equal(t, msgs[0].ID, id, "the retry returns the first entry's ID")
		assert.Len(t, e.entries(), 1)
	})
	t.Run("go-redis retries", func(t *testing.T) {
		// Default options: go-redis resends the EVALSHA on a new connection
		// by itself; the key makes that safe too.
		c := redis.NewClient(&redis.Options{Addr: proxy.Addr()})
		defer c.Close()
		p, err := streamtx.NewProducer(c, streamtx.ProducerConfig{})
		require.NoError(t, err)

		proxy.DropReplyOnce(sha)
		id, err := p.Publish(ctx, e.stream, map[string]any{"n": 2}, streamtx.WithIdempotencyKey("k2"))
		require.NoError(t, err)
		require.Equal(t, 2, proxy.Fired())
		msgs := e.entries()
		require.Len(t, msgs, 2)
		assert.Equal(t, msgs[1].ID, id)
	})
}

func TestProducerConcurrentSameKey(t *testing.T) {
	t.Parallel()
	e := newProdEnv(t)
	ctx := context.Background()
	p := e.producer(streamtx.ProducerConfig{})

	const n = 20
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i], errs[i] = p.Publish(ctx, e.stream, map[string]any{"i": i}, streamtx.WithIdempotencyKey("same"))
		}()
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	msgs := e.entries()
	require.Len(t, msgs, 1)
	for _, id := range ids {
		assert.Equal(t, msgs[0].ID, id)
	}
}

func TestProducerTrimsOnlyWhenSet(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	publish := func(t *testing.T, p *streamtx.Producer, stream string, n int) {
		for i := range n {
			_, err := p.Publish(ctx, stream, map[string]any{"i": i})
			require.NoError(t, err)
		}
	}
	t.Run("default keeps everything", func(t *testing.T) {
		e := newProdEnv(t)
		publish(t, e.producer(streamtx.ProducerConfig{}), e.stream, 50)
		assert.Equal(t, int64(50), e.rdb.XLen(ctx, e.stream).Val())
	})
	t.Run("MaxLen", func(t *testing.T) {
		e := newProdEnv(t)
		publish(t, e.producer(streamtx.ProducerConfig{MaxLen: 3}), e.stream, 10)
		msgs := e.entries()
		require.Len(t, msgs, 3)
		assert.Equal(t, "9", msgs[2].Values["i"], "the newest are kept")
	})
	t.Run("MaxLen approximate", func(t *testing.T) {
		e := newProdEnv(t)
		publish(t, e.producer(streamtx.ProducerConfig{MaxLen: 3, ApproxTrim: true}), e.stream, 10)
		// "~" trims whole macro nodes only (100 entries by default): nothing
		// is removed yet.
		assert.Equal(t, int64(10), e.rdb.XLen(ctx, e.stream).Val())
	})
	t.Run("MinID", func(t *testing.T) {
		e := newProdEnv(t)
		for _, id := range []string{"1-1", "2-1", "3-1"} {
			require.NoError(t, e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: e.stream, ID: id, Values: []any{"old", id}}).Err())
		}
		id, err := e.producer(streamtx.ProducerConfig{MinID: "3-0"}).Publish(ctx, e.stream, map[string]any{"new": 1})
		require.NoError(t, err)
		msgs := e.entries()
		require.Len(t, msgs, 2)
		assert.Equal(t, "3-1", msgs[0].ID)
		assert.Equal(t, id, msgs[1].ID)
	})
	t.Run("a duplicate does not trim", func(t *testing.T) {
		e := newProdEnv(t)
		p := e.producer(streamtx.ProducerConfig{MaxLen: 2})
		_, err := p.Publish(ctx, e.stream, map[string]any{"i": 0}, streamtx.WithIdempotencyKey("k"))
		require.NoError(t, err)
		publish(t, e.producer(streamtx.ProducerConfig{}), e.stream, 3)
		_, err = p.Publish(ctx, e.stream, map[string]any{"i": 0}, streamtx.WithIdempotencyKey("k"))
		require.NoError(t, err)
		assert.Equal(t, int64(4), e.rdb.XLen(ctx, e.stream).Val())
	})
}

func TestProducerRefuses(t *testing.T) {
	t.Parallel()
	e := newProdEnv(t)
	ctx := context.Background()
	p := e.producer(streamtx.ProducerConfig{})

	tests := map[string]struct {
		stream string
		values map[string]any
		opts   []streamtx.PublishOption
		msg    string
	}{
		"empty stream":        {"", map[string]any{"a": 1}, nil, "empty stream name"},
		"no values":           {e.stream, nil, nil, "no values"},
		"unsupported value":   {e.stream, map[string]any{"a": struct{}{}}, nil, "unsupported type"},
		"nil value":           {e.stream, map[string]any{"a": nil}, nil, "nil value"},
		"empty key":           {e.stream, map[string]any{"a": 1}, []streamtx.PublishOption{streamtx.WithIdempotencyKey("")}, "empty idempotency key"},
		"stream without slot": {"a}b", map[string]any{"a": 1}, []streamtx.PublishOption{streamtx.WithIdempotencyKey("k")}, "hash tag"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := p.Publish(ctx, tt.stream, tt.values, tt.opts...)
			require.ErrorIs(t, err, txn.ErrBadPublish)
			assert.Contains(t, err.Error(), tt.msg)
		})
	}
	assert.Equal(t, int64(0), e.rdb.Exists(ctx, e.stream, "a}b").Val(), "nothing was sent")

	// A key of another type: nothing is written, not even the record.
	require.NoError(t, e.rdb.Set(ctx, e.stream, "x", 0).Err())
	_, err := p.Publish(ctx, e.stream, map[string]any{"a": 1}, streamtx.WithIdempotencyKey("k"))
	require.ErrorIs(t, err, streamtx.ErrWrongType)
	assert.Equal(t, int64(0), e.rdb.Exists(ctx, e.record("k")).Val())
}

func TestNewProducerConfig(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:0"}) // never dialled
	defer rdb.Close()
	tests := map[string]struct {
		cfg   streamtx.ProducerConfig
		field string
	}{
		"negative window":    {streamtx.ProducerConfig{Window: -time.Second}, "Window"},
		"sub-ms window":      {streamtx.ProducerConfig{Window: time.Microsecond}, "Window"},
		"negative MaxLen":    {streamtx.ProducerConfig{MaxLen: -1}, "MaxLen"},
		"MaxLen and MinID":   {streamtx.ProducerConfig{MaxLen: 1, MinID: "1-0"}, "MinID"},
		"bad MinID":          {streamtx.ProducerConfig{MinID: "yesterday"}, "MinID"},
		"ApproxTrim without": {streamtx.ProducerConfig{ApproxTrim: true}, "ApproxTrim"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := streamtx.NewProducer(rdb, tt.cfg)
			require.ErrorIs(t, err, streamtx.ErrConfig)
			assert.Contains(t, err.Error(), tt.field)
		})
	}
	_, err := streamtx.NewProducer(nil, streamtx.ProducerConfig{})
	require.ErrorIs(t, err, streamtx.ErrConfig)
	for _, ok := range []streamtx.ProducerConfig{{}, {Window: time.Millisecond}, {MaxLen: 10, ApproxTrim: true}, {MinID: "5"}, {MinID: "5-1"}} {
		_, err := streamtx.NewProducer(rdb, ok)
		require.NoError(t, err, "%+v", ok)
	}
}

func TestProducerPublishEnvelope(t *testing.T) {
	t.Parallel()
	e := newProdEnv(t)
	ctx := context.Background()
	now := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	p := e.producer(streamtx.ProducerConfig{Clock: func() time.Time { return now }})

	ev := streamtx.Envelope[evOrder]{ID: "evt-1", Type: "order.placed", Source: "/shop", Data: evOrder{Order: "1", Amount: 5}}
	id1, err := p.PublishEnvelope(ctx, e.stream, ev)
	require.NoError(t, err)
	// The same event again (a retry): deduplicated on (Source, ID), even
	// with other data.
	ev2 := ev
	ev2.Data.Amount = 6
	id2, err := p.PublishEnvelope(ctx, e.stream, ev2)
	require.NoError(t, err)
	assert.Equal(t, id1, id2)

	// The same ID from another source is another event; so is an explicit
	// key.
	ev3 := ev
	ev3.Source = "/shop:eu"
	id3, err := p.PublishEnvelope(ctx, e.stream, ev3)
	require.NoError(t, err)
	id4, err := p.PublishEnvelope(ctx, e.stream, ev, streamtx.WithIdempotencyKey("other"))
	require.NoError(t, err)
	assert.Len(t, map[string]bool{id1: true, id3: true, id4: true}, 3)

	msgs := e.entries()
	require.Len(t, msgs, 3)
	values := make(map[string]string)
	for k, v := range msgs[0].Values {
		values[k] = fmt.Sprint(v)
	}
	got, err := streamtx.Decode[evOrder](&streamtx.Message{Stream: e.stream, ID: msgs[0].ID, Values: values})
	require.NoError(t, err)
	assert.Equal(t, ev.Data, got.Data)
	assert.True(t, now.Equal(got.Time), "a zero Time is the Clock's: %s", got.Time)

	_, err = p.PublishEnvelope(ctx, e.stream, streamtx.Envelope[int]{Type: "t", Source: "s"})
	require.ErrorIs(t, err, streamtx.ErrBadEnvelope)
	_, err = p.PublishEnvelope(ctx, e.stream, nil)
	require.ErrorIs(t, err, streamtx.ErrBadEnvelope)
	assert.Len(t, e.entries(), 3)
}

// TestProducerOnMiniredis runs the produce script's paths on the embedded
// miniredis, which the examples use.
func TestProducerOnMiniredis(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	p, err := streamtx.NewProducer(rdb, streamtx.ProducerConfig{MaxLen: 2})
	require.NoError(t, err)

	id1, err := p.Publish(ctx, "s", map[string]any{"n": 1}, streamtx.WithIdempotencyKey("k"))
	require.NoError(t, err)
	id2, err := p.Publish(ctx, "s", map[string]any{"n": 1}, streamtx.WithIdempotencyKey("k"))
	require.NoError(t, err)
	assert.Equal(t, id1, id2)
	for i := range 3 {
		_, err := p.Publish(ctx, "s", map[string]any{"n": i})
		require.NoError(t, err)
	}
	assert.Equal(t, int64(2), rdb.XLen(ctx, "s").Val(), "MaxLen trims")

	require.NoError(t, rdb.Set(ctx, "str", "x", 0).Err())
	_, err = p.Publish(ctx, "str", map[string]any{"n": 1})
	require.ErrorIs(t, err, streamtx.ErrWrongType)
}
