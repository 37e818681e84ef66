package clustertest

import (
	"context"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/redistest"
)

// migratePause is how long a migration stays half done after each key it
// moves: long enough for the consumers to run into it many times.
const migratePause = 150 * time.Millisecond

// The slot of the source stream moves to another master while four
// consumers work through it: the manual way redis-cli --cluster reshard
// does it (CLUSTER SETSLOT IMPORTING and MIGRATING, MIGRATE, SETSLOT NODE),
// but one key at a time with a pause after each, so that the slot's keys
// sit on two masters for a while. Meanwhile a command whose keys are all
// gone from the old master is redirected with ASK, and a commit script
// whose keys are split between the two is refused with TRYAGAIN until the
// last key has moved. The run completes and every exactly-once invariant
// holds.
//
// A producer keeps a backlog ahead of the consumers, so they have entries
// in hand when the migration starts; it adds the second half of the entries
// only once the slot has moved, so that they are consumed from the new
// master.
func TestClusterReshardMidRun(t *testing.T) {
	t.Parallel()
	const (
		n       = 2000
		chunk   = 50
		backlog = 200
	)
	rng, _ := newRand(t)
	c := redistest.StartCluster(t, 3, 0)
	skipCrashingServer(t, c)
	r := startMidRun(t, c, "{rh-src}", n, chunk, backlog)
	src, rec, rdb := r.src, r.rec, r.rdb
	from := c.MasterFor(src)
	masters := c.Addrs()[:3] // no replicas: every node is a master
	to := masters[(slices.Index(masters, from)+1)%len(masters)]
	atStart := rec.committed(src)
	start := time.Now()
	moved := migrateSlot(t, c, src, to, rng)
	atEnd := rec.committed(src)
	r.resume()
	require.Equal(t, to, c.MasterFor(src), "the slot moved")
	t.Logf("slot %d of %s moved %s -> %s in %v, keys %v; %d entries committed before, %d after",
		c.Slot(src), src, from, to, time.Since(start).Round(time.Millisecond), moved, atStart, atEnd)
	require.Less(t, atStart, n/2, "the migration started mid-run")
	require.Contains(t, moved, src)
	r.finish()
	// The migration was met half done: some command was redirected with
	// ASK or refused with TRYAGAIN.
	redirected := errorStat(t, rdb, "ASK") + errorStat(t, rdb, "TRYAGAIN")
	assert.Positive(t, redirected, "ASK and TRYAGAIN answers")
}

// migrateSlot moves the hash slot of key from its master to the master at
// to, and returns the keys it moved, in order. It marks the slot IMPORTING
// at to and MIGRATING at the old master, moves the slot's keys one MIGRATE
// at a time in an order drawn from rng, pausing migratePause after each,
// and then assigns the slot to to on every master, to first (as redis-cli
// --cluster reshard does).
func migrateSlot(t *testing.T, c *redistest.Cluster, key, to string, rng *rand.Rand) (moved []string) {
	t.Helper()
	ctx := context.Background()
	slot := c.Slot(key)
	from := c.MasterFor(key)
	require.NotEqual(t, from, to)
	admin := make(map[string]*redis.Client)
	for _, addr := range c.Addrs() {
		a := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		t.Cleanup(func() { a.Close() })
		admin[addr] = a
	}
	nodeID := func(addr string) string {
		id, err := admin[addr].Do(ctx, "CLUSTER", "MYID").Text()
		require.NoError(t, err, "CLUSTER MYID at %s", addr)
		return id
	}
	fromID, toID := nodeID(from), nodeID(to)
	host, port, err := net.SplitHostPort(to)
	require.NoError(t, err)

	require.NoError(t, admin[to].Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", fromID).Err())
	require.NoError(t, admin[from].Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", toID).Err())
	for {
		ks, err := admin[from].ClusterGetKeysInSlot(ctx, slot, 100).Result()
		require.NoError(t, err)
		if len(ks) == 0 {
			break
		}
		rng.Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
		for _, k := range ks {
			err = admin[from].Do(ctx, "MIGRATE", host, port, "", 0, 5000, "KEYS", k).Err()
			require.NoError(t, err, "MIGRATE %s", k)
			moved = append(moved, k)
			time.Sleep(migratePause) // half done: the slot's keys are on two masters
		}
	}
	order := []string{to, from}
	for _, addr := range c.Addrs() {
		if !slices.Contains(order, addr) {
			order = append(order, addr)
		}
	}
	for _, addr := range order {
		require.NoError(t, admin[addr].Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", toID).Err(), "SETSLOT NODE at %s", addr)
	}
	return moved
}

// errorStat sums, over every node, how many times it answered with the
// error prefix (INFO errorstats).
func errorStat(t *testing.T, rdb *redis.ClusterClient, prefix string) int {
	t.Helper()
	var mu sync.Mutex
	total := 0
	err := rdb.ForEachShard(context.Background(), func(ctx context.Context, node *redis.Client) error {
		info, err := node.Info(ctx, "errorstats").Result()
		if err != nil {
			return err
		}
		for _, line := range strings.Split(info, "\n") {
			// errorstat_ASK:count=12
			rest, ok := strings.CutPrefix(strings.TrimSpace(line), "errorstat_"+prefix+":count=")
			if !ok {
				continue
			}
			k, err := strconv.Atoi(rest)
			if err != nil {
				return err
			}
			mu.Lock()
			total += k
			mu.Unlock()
		}
		return nil
	})
	require.NoError(t, err)
	return total
}

// skipCrashingServer skips the test on Redis 7.2.x (not Valkey, which
// reports 7.2.4 as its Redis compatibility level): moving a slot while a
// client is blocked in XREADGROUP on one of its keys crashes the source
// master there ("ASSERTION FAILED ==> networking.c:2066 'c->duration == 0'",
// valkey-io/valkey#563, fixed by #526), in about 1 run in 10. That is the
// server under test failing, not streamtx; the test runs on every other
// server of the CI matrix.
func skipCrashingServer(t *testing.T, c *redistest.Cluster) {
	t.Helper()
	a := redis.NewClient(&redis.Options{Addr: c.Addrs()[0]})
	defer a.Close()
	info, err := a.Info(context.Background(), "server").Result()
	require.NoError(t, err)
	if strings.Contains(info, "redis_version:7.2.") && !strings.Contains(info, "valkey_version:") {
		t.Skip("Redis 7.2.x crashes when a slot moves under a blocked XREADGROUP (valkey-io/valkey#563); covered on 7.0, 7.4 and Valkey 8")
	}
}
