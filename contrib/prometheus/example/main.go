// Command example runs a streamtx consumer fed by an idempotent producer and
// serves its Prometheus metrics:
//
//	go run . [-addr 127.0.0.1:9464] [-for 0]
//	curl -s http://127.0.0.1:9464/metrics | grep ^streamtx_
//
// It uses the Redis at REDIS_ADDR, or an embedded miniredis when REDIS_ADDR is
// unset. It runs until interrupted, or for the duration given by -for.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/streamtx/streamtx"
	stxprom "github.com/streamtx/streamtx/contrib/prometheus"
	"github.com/streamtx/streamtx/txn"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9464", "listen address of /metrics (loopback)")
	runFor := flag.Duration("for", 0, "stop after this long (0: run until interrupted)")
	flag.Parse()
	if err := run(*addr, *runFor); err != nil {
		log.Fatalf("example: %v", err)
	}
}

func run(addr string, runFor time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if runFor > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, runFor)
		defer cancel()
	}

	rdb, stream, closeRedis, err := connect()
	if err != nil {
		return err
	}
	defer closeRedis()
	const group = "billing"

	// Metrics: the consumer's events, its handler's durations, and the
	// group's lag and pending entries read at every scrape.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := stxprom.NewMetrics(stxprom.Options{})
	reg.MustRegister(m)
	reg.MustRegister(stxprom.NewGroupStatsCollector(stxprom.InspectStats(rdb, stxprom.Sources{Streams: []string{stream}}), stxprom.GroupStatsOptions{}))

	handler := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if _, err := strconv.Atoi(msg.Values["amount"]); err != nil {
			return streamtx.Permanent(err) // counted in streamtx_dead_letters_total
		}
		return nil
	})
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream: stream, Group: group, Consumer: "billing-1",
		Observer: m,
	}, m.InstrumentHandler(handler, stream, group))
	if err != nil {
		return err
	}
	p, err := streamtx.NewProducer(rdb, streamtx.ProducerConfig{})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	fmt.Printf("serving metrics on http://%s/metrics\n", ln.Addr())

	// Run until interrupted, or until one part fails: the group's context
	// then ends, which stops the others.
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.Run(gctx) })
	g.Go(func() error { return produce(gctx, p, stream) })
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		shutdown, done := context.WithTimeout(context.WithoutCancel(gctx), 5*time.Second)
		defer done()
		return srv.Shutdown(shutdown)
	})
	return g.Wait()
}

// produce publishes an order every 100ms, with an idempotency key per order,
// and now and then a bad one that the consumer dead-letters.
func produce(ctx context.Context, p *streamtx.Producer, stream string) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		amount := strconv.Itoa(i % 50)
		if i%25 == 0 {
			amount = "n/a"
		}
		key := "order-" + strconv.Itoa(i)
		if _, err := p.Publish(ctx, stream, map[string]any{"order": key, "amount": amount}, streamtx.WithIdempotencyKey(key)); err != nil && ctx.Err() == nil {
			return err
		}
	}
}

// connect returns a client for REDIS_ADDR, or for an embedded miniredis, and
// the name of the stream to use. On a shared Redis the name is unique to
// this run, and the close function deletes the stream and the keys streamtx
// derived from it.
func connect() (rdb *redis.Client, stream string, close func(), err error) {
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return nil, "", nil, err
		}
		fmt.Printf("REDIS_ADDR is not set: using an embedded miniredis at %s\n", mr.Addr())
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		return rdb, "orders", func() { rdb.Close(); mr.Close() }, nil
	}
	var b [4]byte
	rand.Read(b[:])
	stream = "stx-example-orders-" + hex.EncodeToString(b[:])
	rdb = redis.NewClient(&redis.Options{Addr: addr})
	fmt.Printf("using Redis at %s, stream %s (deleted on exit)\n", addr, stream)
	return rdb, stream, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		del := []string{stream}
		iter := rdb.Scan(ctx, 0, "stx:{"+stream+"}:*", 1000).Iterator()
		for iter.Next(ctx) {
			del = append(del, iter.Val())
		}
		for _, k := range del {
			rdb.Unlink(ctx, k)
		}
		rdb.Close()
	}, nil
}
