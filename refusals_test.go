package streamtx_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

// A Redis error reply that says nothing about the entries (an ACL without a
// rule, memory full, persistence failing) must never count toward
// dead-lettering nor acknowledge anything: the consumer retries, reports the
// exact error, says it is unhealthy, and commits every entry once when the
// cause is removed. Each case runs on a server of its own.

// refusal is one class of Redis refusal: how to cause it and remove it.
type refusal struct {
	args    []string                                              // extra redis-server arguments
	client  func(t *testing.T, s *redistest.Server) *redis.Client // the consumer's client
	cause   func(t *testing.T, admin *redis.Client)
	remove  func(t *testing.T, admin *redis.Client)
	errText string // what the reported error says
}

func testRefusal(t *testing.T, r refusal) {
	t.Parallel()
	srv := redistest.StartServer(t, r.args...)
	admin := srv.Client(t)
	e := &env{t: t, rdb: admin, p: redistest.Prefix(t, admin)}
	ctx := context.Background()
	src, out := e.key("in"), e.key("out")
	require.NoError(t, admin.XGroupCreateMkStream(ctx, src, "g", "0").Err())
	ids := e.add(src, 20, func(i int) map[string]any { return map[string]any{"i": i} })

	// The first batch is held in the handler while the cause is put in
	// place, so that its commit is what Redis refuses.
	entered, gate := make(chan struct{}), make(chan struct{})
	h := countAndPublish("n", out)
	gated := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if msg.ID == ids[0] {
			select {
			case <-entered:
			default:
				close(entered)
				<-gate
			}
		}
		return h.Handle(ctx, msg, tx)
	})
	ev := newEvents()
	cfg := e.cfg(src, "g", "c")
	cfg.BatchSize = 5
	cfg.MaxDeliveries = 2
	cfg.Observer = ev
	client := admin
	if r.client != nil {
		client = r.client(t, srv)
	}
	c, err := streamtx.NewConsumer(client, cfg, gated)
	require.NoError(t, err)
	run(t, c)
	<-entered
	r.cause(t, admin)
	close(gate)

	// Refused again and again, and said so.
	for n := 0; n < 4; {
		ev.wait(t, streamtx.EventError, func(e streamtx.Event) bool {
			return strings.Contains(e.Err.Error(), r.errText)
		})
		n++
	}
	require.ErrorContains(t, c.Health(), r.errText)
	// Nothing acknowledged, nothing dead-lettered, and no refusal counted
	// as a delivery.
	require.Zero(t, admin.Exists(ctx, out, c.DeadLetterStream()).Val())
	rows, err := admin.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: src, Group: "g", Start: "-", End: "+", Count: 100}).Result()
	require.NoError(t, err)
	require.NotEmpty(t, rows)
	for _, row := range rows {
		require.EqualValues(t, 1, row.RetryCount, "entry %s", row.ID)
	}

	r.remove(t, admin)
	e.drained(src, "g")
	require.Zero(t, admin.Exists(ctx, c.DeadLetterStream()).Val())
	e.requireExactlyOnce(out, ids)
	require.Equal(t, len(ids), e.counterState(src, "g", "n").Value.N)
	eventually(t, "healthy again", func() bool { return c.Health() == nil })
}

func TestRefusedByACLIsRetriedNotDeadLettered(t *testing.T) {
	testRefusal(t, refusal{
		client: aclUser,
		cause: func(t *testing.T, admin *redis.Client) {
			require.NoError(t, admin.Do(context.Background(), "ACL", "SETUSER", "app", "-set").Err())
		},
		remove: func(t *testing.T, admin *redis.Client) {
			require.NoError(t, admin.Do(context.Background(), "ACL", "SETUSER", "app", "+set").Err())
		},
		errText: "NOPERM streamtx commit: this user may not run SET on key",
	})
}

// Redis checks ACLs at every call of a script: a user who may SET and XADD
// but not XACK would get the state and publishes of a commit without its
// acknowledgement, and the entries would apply again. The commit asks for
// every write first, so it writes nothing.
func TestRefusedLastWriteOfCommitWritesNothing(t *testing.T) {
	testRefusal(t, refusal{
		client: aclUser,
		cause: func(t *testing.T, admin *redis.Client) {
			require.NoError(t, admin.Do(context.Background(), "ACL", "SETUSER", "app", "-xack").Err())
		},
		remove: func(t *testing.T, admin *redis.Client) {
			require.NoError(t, admin.Do(context.Background(), "ACL", "SETUSER", "app", "+xack").Err())
		},
		errText: "NOPERM streamtx commit: this user may not run XACK",
	})
}

// A handler whose state cannot be loaded (here: no MGET) did not fail: its
// entry is held and handled again as it is, without a re-delivery.
func TestStateLoadRefusedIsHeldNotDeadLettered(t *testing.T) {
	testRefusal(t, refusal{
		client: aclUser,
		cause: func(t *testing.T, admin *redis.Client) {
			require.NoError(t, admin.Do(context.Background(), "ACL", "SETUSER", "app", "-mget").Err())
		},
		remove: func(t *testing.T, admin *redis.Client) {
			require.NoError(t, admin.Do(context.Background(), "ACL", "SETUSER", "app", "+mget").Err())
		},
		errText: "NOPERM",
	})
}

func TestOutOfMemoryIsRetriedNotDeadLettered(t *testing.T) {
	testRefusal(t, refusal{
		args: []string{"--maxmemory-policy", "noeviction"},
		cause: func(t *testing.T, admin *redis.Client) {
			require.NoError(t, admin.ConfigSet(context.Background(), "maxmemory", "1").Err())
		},
		remove: func(t *testing.T, admin *redis.Client) {
			require.NoError(t, admin.ConfigSet(context.Background(), "maxmemory", "0").Err())
		},
		errText: "OOM",
	})
}

// Persistence failing: the RDB directory vanishes under a server with a
// save point, its BGSAVE fails, and Redis refuses every write (MISCONF)
// until a BGSAVE succeeds again.
func TestPersistenceFailureIsRetriedNotDeadLettered(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rdb")
	testRefusal(t, refusal{
		args: []string{"--save", "3600 1", "--enable-protected-configs", "yes"},
		cause: func(t *testing.T, admin *redis.Client) {
			ctx := context.Background()
			require.NoError(t, os.Mkdir(dir, 0o700))
			require.NoError(t, admin.ConfigSet(ctx, "dir", dir).Err())
			require.NoError(t, os.RemoveAll(dir))
			require.NoError(t, admin.BgSave(ctx).Err())
			eventually(t, "BGSAVE failed", func() bool {
				info, err := admin.Info(ctx, "persistence").Result()
				return err == nil && strings.Contains(info, "rdb_last_bgsave_status:err")
			})
		},
		remove: func(t *testing.T, admin *redis.Client) {
			ctx := context.Background()
			require.NoError(t, os.Mkdir(dir, 0o700))
			require.NoError(t, admin.ConfigSet(ctx, "dir", dir).Err())
			eventually(t, "BGSAVE succeeded", func() bool {
				info, err := admin.Info(ctx, "persistence").Result()
				if err != nil || strings.Contains(info, "rdb_bgsave_in_progress:1") {
					return false
				}
				if strings.Contains(info, "rdb_last_bgsave_status:ok") {
					return true
				}
				admin.BgSave(ctx) // may answer "already in progress"
				return false
			})
		},
		errText: "MISCONF",
	})
}

// aclUser creates the ACL user "app", allowed everything, and returns a
// client logged in as it.
func aclUser(t *testing.T, s *redistest.Server) *redis.Client {
	admin := s.Client(t)
	require.NoError(t, admin.Do(context.Background(), "ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all").Err())
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Username: "app", Password: "pw"})
	t.Cleanup(func() { c.Close() })
	return c
}
