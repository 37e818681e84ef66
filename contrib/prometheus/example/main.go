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
	"strings"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

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
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

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
	reg.MustRegister(stxprom.NewGroupStatsCollector(groupStats(rdb, stream), stxprom.GroupStatsOptions{}))

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

	errc := make(chan error, 3)
	go func() { errc <- c.Run(ctx) }()
	go func() { errc <- produce(ctx, p, stream) }()
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}()

	// Run until interrupted, or until one part fails; then stop the others.
	running := 3
	var errs []error
	select {
	case err := <-errc:
		running--
		errs = append(errs, err)
	case <-ctx.Done():
	}
	cancel()
	shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	if err := srv.Shutdown(shutdown); err != nil {
		errs = append(errs, err)
	}
	for ; running > 0; running-- {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
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

// groupStats reads the lag and pending entries of the stream's groups with
// XINFO GROUPS and XPENDING. A service on streamtx would rather call
// streamtx.Inspect (see the package documentation).
func groupStats(rdb redis.UniversalClient, stream string) stxprom.StatsFunc {
	return func(ctx context.Context) ([]stxprom.GroupStats, error) {
		groups, err := rdb.XInfoGroups(ctx, stream).Result()
		if err != nil {
			return nil, err
		}
		out := make([]stxprom.GroupStats, 0, len(groups))
		for _, g := range groups {
			s := stxprom.GroupStats{Stream: stream, Group: g.Name, Lag: max(g.Lag, 0), Pending: g.Pending}
			if g.Pending > 0 {
				p, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: g.Name, Start: "-", End: "+", Count: 1}).Result()
				if err != nil {
					return nil, err
				}
				if len(p) == 1 {
					s.OldestPendingAge = idAge(p[0].ID)
				}
			}
			out = append(out, s)
		}
		return out, nil
	}
}

// idAge is the time since the entry with the given ID was added.
func idAge(id string) time.Duration {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return 0
	}
	return max(time.Since(time.UnixMilli(n)), 0)
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
