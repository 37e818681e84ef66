// Command example follows orders through streamtx with OpenTelemetry and
// prints the spans to stdout: a producer publishes three orders, a billing
// consumer publishes a receipt for each good one (tx.Publish) and
// dead-letters the bad one, and a mail consumer handles the receipts — each
// order one trace, from its publish span through both handlers.
//
//	go run .            # one JSON object per span
//	go run . -summary   # one line per span: trace, span, parent, name
//
// It uses the Redis at REDIS_ADDR, or an embedded miniredis when REDIS_ADDR is
// unset.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/streamtx/streamtx"
	stxotel "github.com/streamtx/streamtx/contrib/otel"
	"github.com/streamtx/streamtx/txn"
)

func main() {
	summary := flag.Bool("summary", false, "print one line per span instead of JSON")
	flag.Parse()
	if err := run(*summary); err != nil {
		log.Fatalf("example: %v", err)
	}
}

func run(summary bool) error {
	ctx := context.Background()
	rdb, prefix, closeRedis, err := connect()
	if err != nil {
		return err
	}
	defer closeRedis()
	orders, receipts := prefix+"orders", prefix+"receipts"

	var exp sdktrace.SpanExporter
	if summary {
		exp = summaryExporter{}
	} else if exp, err = stdouttrace.New(stdouttrace.WithPrettyPrint()); err != nil {
		return err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(ctx)
	opts := []stxotel.Option{
		stxotel.WithTracerProvider(tp),
		stxotel.WithPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})),
	}

	var wg sync.WaitGroup
	wg.Add(3) // two receipts mailed, one order dead-lettered
	billing := streamtx.Config{Stream: orders, Group: "billing", Consumer: "billing-1", Block: 50 * time.Millisecond}
	if err := stxotel.InstrumentConsumer(&billing, opts...); err != nil {
		return err
	}
	billing.Observer = stxotel.Observers(billing.Observer, streamtx.ObserverFunc(func(e streamtx.Event) {
		if e.Kind == streamtx.EventDeadLetter {
			wg.Done()
		}
	}))
	bc, err := streamtx.NewConsumer(rdb, billing, streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		amount, err := strconv.Atoi(msg.Values["amount"])
		if err != nil {
			return streamtx.Permanent(err) // dead-lettered, in the order's trace
		}
		return tx.Publish(receipts, map[string]any{"order": msg.Values["order"], "total": amount})
	}))
	if err != nil {
		return err
	}
	mail := streamtx.Config{Stream: receipts, Group: "mail", Consumer: "mail-1", Block: 50 * time.Millisecond}
	if err := stxotel.InstrumentConsumer(&mail, opts...); err != nil {
		return err
	}
	mc, err := streamtx.NewConsumer(rdb, mail, streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		defer wg.Done()
		return nil // send the mail here, under ctx: its spans join the order's trace
	}))
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	errs := make(chan error, 2)
	for _, c := range []*streamtx.Consumer{bc, mc} {
		go func() { errs <- c.Run(runCtx) }()
	}

	pcfg := streamtx.ProducerConfig{}
	stxotel.InstrumentProducer(&pcfg, opts...)
	prod, err := streamtx.NewProducer(rdb, pcfg)
	if err != nil {
		stop()
		return err
	}
	for i, amount := range []string{"30", "oops", "12"} {
		order := fmt.Sprintf("o-%d", i+1)
		if _, err := prod.Publish(ctx, orders, map[string]any{"order": order, "amount": amount},
			streamtx.WithIdempotencyKey(order)); err != nil {
			stop()
			return err
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		err = errors.New("the orders were not all handled within 30s")
	}
	stop()
	for range 2 {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	return err
}

// summaryExporter prints one line per span.
type summaryExporter struct{}

func (summaryExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	for _, s := range spans {
		parent := "-"
		if s.Parent().IsValid() {
			parent = s.Parent().SpanID().String()
		}
		fmt.Printf("trace %s span %s parent %-16s %-8s %s\n", s.SpanContext().TraceID(), s.SpanContext().SpanID(), parent, s.SpanKind(), s.Name())
	}
	return nil
}

func (summaryExporter) Shutdown(context.Context) error { return nil }

// connect returns a client of REDIS_ADDR (with a random key prefix) or of an
// embedded miniredis.
func connect() (redis.UniversalClient, string, func(), error) {
	if addr := os.Getenv("REDIS_ADDR"); addr != "" {
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		var b [4]byte
		rand.Read(b[:])
		prefix := "example:otel:" + hex.EncodeToString(b[:]) + ":"
		return rdb, prefix, func() { rdb.Close() }, nil
	}
	mr, err := miniredis.Run()
	if err != nil {
		return nil, "", nil, err
	}
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	return rdb, "", func() { rdb.Close(); mr.Close() }, nil
}
