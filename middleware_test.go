package streamtx_test

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

// trace is a middleware that records the order handlers are entered in.
type trace struct {
	mu   sync.Mutex
	seen map[string][]string // entry ID -> middleware names in the order entered
}

func (tr *trace) mw(name string) streamtx.Middleware {
	return func(h streamtx.Handler) streamtx.Handler {
		return streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
			tr.mu.Lock()
			if tr.seen == nil {
				tr.seen = map[string][]string{}
			}
			tr.seen[msg.ID] = append(tr.seen[msg.ID], name)
			tr.mu.Unlock()
			return h.Handle(ctx, msg, tx)
		})
	}
}

type hidden struct {
	N      int
	secret int //nolint:unused // the field the check must find
}

// wrappings are the ways of applying two middlewares that keep the handler
// visible to the consumer.
func wrappings(tr *trace) map[string]func(h streamtx.Handler, cfg *streamtx.Config) streamtx.Handler {
	return map[string]func(h streamtx.Handler, cfg *streamtx.Config) streamtx.Handler{
		"Config.Middleware": func(h streamtx.Handler, cfg *streamtx.Config) streamtx.Handler {
			cfg.Middleware = []streamtx.Middleware{tr.mw("outer"), tr.mw("inner")}
			return h
		},
		"Wrap": func(h streamtx.Handler, cfg *streamtx.Config) streamtx.Handler {
			return streamtx.Wrap(h, tr.mw("outer"), tr.mw("inner"))
		},
		"Wrap twice": func(h streamtx.Handler, cfg *streamtx.Config) streamtx.Handler {
			return streamtx.Wrap(streamtx.Wrap(h, tr.mw("inner")), tr.mw("outer"))
		},
	}
}

// Wrapped twice, a Stateful handler of a type with an unexported field is
// still refused (msgpack would drop the field: silent state loss).
func TestWrappedStatefulStateTypeIsStillChecked(t *testing.T) {
	e := newEnv(t)
	for name, wrap := range wrappings(&trace{}) {
		t.Run(name, func(t *testing.T) {
			for _, h := range []streamtx.Handler{
				streamtx.Stateful("s", func(context.Context, *streamtx.Message, *hidden, *txn.Tx) error { return nil }),
				streamtx.Keyed("s", func(m *streamtx.Message) string { return m.ID },
					func(context.Context, *streamtx.Message, *hidden, *txn.Tx) error { return nil }),
			} {
				cfg := e.cfg(e.key("in"), "g", "c")
				_, err := streamtx.NewConsumer(e.rdb, cfg, wrap(h, &cfg))
				require.ErrorIs(t, err, streamtx.ErrConfig)
				require.ErrorContains(t, err, "unexported field hidden.secret")
			}
		})
	}
}

// Every handler kind, wrapped twice each way, runs its middleware in order
// and commits every entry once; Keyed keeps its key function for lanes
// (Parallelism > 1 needs no PartitionKey).
func TestWrappedHandlersRunInOrderAndCommitOnce(t *testing.T) {
	t.Parallel()
	kinds := map[string]func(out string) (streamtx.Handler, bool){
		"HandlerFunc": func(out string) (streamtx.Handler, bool) {
			return streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
				return tx.Publish(out, map[string]any{"src": msg.ID})
			}), false
		},
		"Stateful": func(out string) (streamtx.Handler, bool) { return countAndPublish("n", out), false },
		"Keyed": func(out string) (streamtx.Handler, bool) {
			return streamtx.Keyed("k", func(m *streamtx.Message) string { return m.Values["k"] },
				func(ctx context.Context, msg *streamtx.Message, s *counter, tx *txn.Tx) error {
					s.N++
					return tx.Publish(out, map[string]any{"src": msg.ID, "k": msg.Values["k"], "n": s.N})
				}), true
		},
	}
	for kind, mk := range kinds {
		for wname := range wrappings(&trace{}) {
			t.Run(kind+"/"+wname, func(t *testing.T) {
				t.Parallel()
				e := newEnv(t)
				src, out := e.key("in"), e.key("out")
				ids := e.add(src, 40, func(i int) map[string]any { return map[string]any{"k": strconv.Itoa(i % 4)} })
				tr := &trace{}
				h, keyed := mk(out)
				cfg := e.cfg(src, "g", "c")
				if keyed {
					cfg.Parallelism = 4
				}
				h = wrappings(tr)[wname](h, &cfg)
				c, err := streamtx.NewConsumer(e.rdb, cfg, h)
				require.NoError(t, err)
				run(t, c)
				e.drained(src, "g")
				got := e.entries(out)
				require.Len(t, got, len(ids))
				seen := map[string]bool{}
				for _, m := range got {
					src := m.Values["src"].(string)
					require.False(t, seen[src], "%s published twice", src)
					seen[src] = true
				}
				tr.mu.Lock()
				defer tr.mu.Unlock()
				require.Len(t, tr.seen, len(ids))
				for id, names := range tr.seen {
					require.GreaterOrEqual(t, len(names), 2, id)
					for i := 0; i+1 < len(names); i += 2 {
						require.Equal(t, []string{"outer", "inner"}, names[i:i+2], id)
					}
				}
			})
		}
	}
}
