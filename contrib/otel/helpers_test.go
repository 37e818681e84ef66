package otel_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	stxotel "github.com/streamtx/streamtx/contrib/otel"
)

// redisClient returns a client of the Redis at REDIS_ADDR, or skips the test
// (fails it under STREAMTX_REQUIRE_REDIS=1).
func redisClient(t testing.TB) *redis.Client {
	t.Helper()
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		if os.Getenv("STREAMTX_REQUIRE_REDIS") == "1" {
			t.Fatal("REDIS_ADDR is not set and STREAMTX_REQUIRE_REDIS=1")
		}
		t.Skip("integration test: set REDIS_ADDR=host:port of a Redis 7 server")
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("Redis at %s: %v", addr, err)
	}
	return rdb
}

// prefix returns a key prefix of the test's own, and deletes its keys (and
// the streamtx keys derived from them) when the test ends. Never FLUSHALL: the
// server is shared.
func prefix(t testing.TB, rdb redis.UniversalClient) string {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	name := strings.NewReplacer("/", "_", "*", "_", "?", "_", "[", "_", "]", "_", "{", "_", "}", "_").Replace(t.Name())
	p := "t:otel:" + name + ":" + hex.EncodeToString(b[:]) + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, pat := range []string{p + "*", "stx:{" + p + "*"} {
			iter := rdb.Scan(ctx, 0, pat, 1000).Iterator()
			for iter.Next(ctx) {
				rdb.Del(ctx, iter.Val())
			}
		}
	})
	return p
}

// recorder returns a span recorder and the options that send spans to it,
// with W3C trace context and baggage as the propagator.
func recorder() (*tracetest.SpanRecorder, []stxotel.Option) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prop := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	return rec, []stxotel.Option{stxotel.WithTracerProvider(tp), stxotel.WithPropagator(prop)}
}

// waitFor polls cond until it holds, or fails the test after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
