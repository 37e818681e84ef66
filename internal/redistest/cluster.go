package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// clusterTimeout bounds creating a cluster and settling after a failover.
	clusterTimeout = 30 * time.Second
	// failoverRetry is how long Failover waits for a manual failover before
	// asking again (Redis gives up on one after 5s).
	failoverRetry = 6 * time.Second
	// clusterPoll is the pause between two looks at the cluster's state.
	clusterPoll = 20 * time.Millisecond
	// numSlots is the number of Redis Cluster hash slots.
	numSlots = 16384
)

// Cluster is a Redis Cluster of redis-server processes private to one test,
// for tests of cluster clients, slots and failovers. Its methods are safe for
// concurrent use; those that take a testing.TB must be called from the
// test's goroutine.
type Cluster struct {
	tb       testing.TB
	masters  int
	replicas int // per master
	nodes    []*Server
	admin    []*redis.Client // one per node, for the harness's own commands
	stopOnce sync.Once
}

// StartCluster starts masters*(1+replicasPerMaster) redis-server processes
// on free loopback ports, each with its own directory, cluster mode on
// (cluster-node-timeout 1s), no persistence (no AOF, no RDB snapshots), and
// joins them with `redis-cli --cluster create`: redis-cli spreads the 16384
// slots evenly over the masters in the order of [Cluster.Addrs] and gives
// each master replicasPerMaster replicas. It returns once every node reports
// cluster_state:ok with every slot served, all nodes agree on who serves
// which slot, and every replica is in sync with its master. Every process is
// stopped when the test ends.
//
// Redis Cluster needs at least 3 masters. Without redis-server or redis-cli
// on PATH, StartCluster skips the test, or fails it when
// STREAMTX_REQUIRE_REDIS=1.
func StartCluster(t testing.TB, masters, replicasPerMaster int) *Cluster {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("STREAMTX_REQUIRE_REDIS") == "1" {
				t.Fatalf("redistest: no Redis Cluster and STREAMTX_REQUIRE_REDIS=1: %v", err)
			}
			t.Skipf("cluster test: put redis-server and redis-cli (Redis 7+) on PATH (%v)", err)
		}
	}
	if masters < 3 || replicasPerMaster < 0 {
		t.Fatalf("redistest: StartCluster(%d, %d): a cluster needs at least 3 masters and no negative replicas", masters, replicasPerMaster)
	}
	c := &Cluster{tb: t, masters: masters, replicas: replicasPerMaster}
	t.Cleanup(c.Stop)

	n := masters * (1 + replicasPerMaster)
	c.nodes = make([]*Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		dir := t.TempDir()
		wg.Go(func() { c.nodes[i], errs[i] = newClusterNode(t, dir) })
	}
	wg.Wait()
	c.nodes = slices.DeleteFunc(c.nodes, func(s *Server) bool { return s == nil })
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("redistest: starting cluster nodes: %v", err)
	}
	for _, s := range c.nodes {
		c.admin = append(c.admin, redis.NewClient(&redis.Options{
			Addr:        s.Addr(),
			MaxRetries:  -1,
			DialTimeout: time.Second,
			ReadTimeout: 2 * time.Second,
		}))
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicasPerMaster), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if err := c.waitSettled(ctx, nil); err != nil {
		t.Fatalf("redistest: cluster of %v did not settle: %v", c.Addrs(), err)
	}
	return c
}

// newClusterNode starts a cluster-enabled redis-server in dir on a free port,
// with its cluster bus on another free port, trying other ports if someone
// else took the ones it picked. The bus port is set explicitly because the
// default, port+10000, may not exist for an ephemeral port.
func newClusterNode(t testing.TB, dir string) (*Server, error) {
	const attempts = 5
	var err error
	for range attempts {
		var ports []int
		if ports, err = freePorts(2); err != nil {
			return nil, err
		}
		s := &Server{tb: t, port: ports[0], dir: dir, args: []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes-"+strconv.Itoa(ports[0])+".conf"),
			"--cluster-node-timeout", "1000",
			"--cluster-port", strconv.Itoa(ports[1]),
			// A master waits 5s by default for more replicas before it
			// sends its first full sync.
			"--repl-diskless-sync-delay", "0",
			// CLUSTER SLOTS leaves out a replica until its replication
			// offset moves, which on an idle master takes one ping (10s
			// by default).
			"--repl-ping-replica-period", "1",
		}}
		if s.proc, err = s.launch(); err == nil {
			return s, nil
		}
		if !errors.Is(err, errAddrInUse) {
			return nil, err
		}
	}
	return nil, err
}

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close() // held until all are picked, so they differ
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Addrs returns the address of every node, "127.0.0.1:port", in the order
// they were given to redis-cli: the first masters ones started as masters.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		addrs[i] = s.Addr()
	}
	return addrs
}

// Nodes returns the redis-server of every node, in the order of
// [Cluster.Addrs], for tests that kill, pause or restart one.
func (c *Cluster) Nodes() []*Server { return slices.Clone(c.nodes) }

// Client returns a cluster client that knows every node, closed when the test
// ends.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// Slot returns key's hash slot as the cluster computes it (CLUSTER KEYSLOT).
// It fails the test if no node answers.
func (c *Cluster) Slot(key string) int {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	slot, err := c.keySlot(ctx, key)
	if err != nil {
		c.tb.Fatalf("redistest: CLUSTER KEYSLOT %q: %v", key, err)
	}
	return slot
}

// MasterFor returns the address of the master that serves key's hash slot,
// as every answering node agrees (it polls while they disagree, as they may
// for a moment after a failover). It fails the test if they do not agree
// within 30s; call it from the test's goroutine.
func (c *Cluster) MasterFor(key string) (addr string) {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	slot, err := c.keySlot(ctx, key)
	if err != nil {
		c.tb.Fatalf("redistest: CLUSTER KEYSLOT %q: %v", key, err)
	}
	var last error
	for {
		var sm slotMap
		if sm, last = c.agreedSlots(ctx); last == nil {
			if r, ok := sm.find(slot); ok {
				return r.nodes[0]
			}
			last = fmt.Errorf("slot %d is not served", slot)
		}
		if !pause(ctx) {
			c.tb.Fatalf("redistest: master of %q (slot %d): %v", key, slot, last)
			return ""
		}
	}
}

// Failover promotes a replica of the master that serves key's slot with
// CLUSTER FAILOVER (a manual failover: the master stops writes, the replica
// catches up, then takes over, so no acknowledged write is lost). It returns
// once the replica reports role master, every node says it serves the slot,
// and the cluster has settled again (see [StartCluster]); it fails the test
// if that takes more than 30s or if the master has no replica.
func (c *Cluster) Failover(t testing.TB, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	if err := c.waitSettled(ctx, nil); err != nil {
		t.Fatalf("redistest: failover of %q: cluster not settled before: %v", key, err)
	}
	slot, err := c.keySlot(ctx, key)
	if err != nil {
		t.Fatalf("redistest: failover: CLUSTER KEYSLOT %q: %v", key, err)
	}
	sm, err := c.agreedSlots(ctx)
	if err != nil {
		t.Fatalf("redistest: failover of %q: %v", key, err)
	}
	r, _ := sm.find(slot)
	if len(r.nodes) < 2 {
		t.Fatalf("redistest: failover of %q: master %s of slot %d has no replica", key, r.nodes[0], slot)
	}
	master, replica := r.nodes[0], r.nodes[1]
	rc := c.adminFor(replica)
	if rc == nil {
		t.Fatalf("redistest: failover: replica %s is not a node of this cluster", replica)
	}

	asked := time.Now()
	if err := rc.ClusterFailover(ctx).Err(); err != nil {
		t.Fatalf("redistest: CLUSTER FAILOVER on %s: %v", replica, err)
	}
	for {
		role, err := infoField(ctx, rc, "replication", "role")
		if err == nil && role == "master" {
			break
		}
		if time.Since(asked) > failoverRetry {
			// Redis aborts a manual failover that did not finish in 5s.
			t.Logf("redistest: replica %s not promoted after %v; asking again", replica, time.Since(asked).Round(time.Millisecond))
			if err := rc.ClusterFailover(ctx).Err(); err != nil {
				t.Fatalf("redistest: CLUSTER FAILOVER on %s: %v", replica, err)
			}
			asked = time.Now()
		}
		if !pause(ctx) {
			t.Fatalf("redistest: replica %s of %s (slot %d) not promoted: role %q, %v", replica, master, slot, role, err)
		}
	}
	want := func(sm slotMap) error {
		if r, _ := sm.find(slot); len(r.nodes) == 0 || r.nodes[0] != replica {
			return fmt.Errorf("slot %d still served by %v, not %s", slot, r.nodes, replica)
		}
		return nil
	}
	if err := c.waitSettled(ctx, want); err != nil {
		t.Fatalf("redistest: cluster did not settle after the failover of %s to %s: %v", master, replica, err)
	}
}

// Stop stops every node gracefully (see [Server.Stop]), all at once. It is
// called when the test ends; calling it again does nothing.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		for _, a := range c.admin {
			a.Close()
		}
		var wg sync.WaitGroup
		for _, s := range c.nodes {
			wg.Go(s.Stop)
		}
		wg.Wait()
	})
}

// waitSettled polls until the cluster is settled — every node says
// cluster_state:ok with all slots ok and knows every other node; all agree
// on the slot map; each slot range has a master and its replicas; every
// replica's link to its master is up — and extra, if not nil, accepts the
// slot map. It returns the last reason for not being settled when ctx ends.
func (c *Cluster) waitSettled(ctx context.Context, extra func(slotMap) error) error {
	for {
		err := c.settled(ctx)
		if err == nil && extra != nil {
			var sm slotMap
			if sm, err = c.agreedSlots(ctx); err == nil {
				err = extra(sm)
			}
		}
		if err == nil {
			return nil
		}
		if !pause(ctx) {
			return err
		}
	}
}

func (c *Cluster) settled(ctx context.Context) error {
	total := len(c.nodes)
	for i, a := range c.admin {
		info, err := a.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("%s: CLUSTER INFO: %w", c.nodes[i].Addr(), err)
		}
		f := parseInfo(info)
		if f["cluster_state"] != "ok" || f["cluster_slots_ok"] != strconv.Itoa(numSlots) || f["cluster_known_nodes"] != strconv.Itoa(total) {
			return fmt.Errorf("%s: cluster_state:%s cluster_slots_ok:%s cluster_known_nodes:%s (want ok, %d, %d)",
				c.nodes[i].Addr(), f["cluster_state"], f["cluster_slots_ok"], f["cluster_known_nodes"], numSlots, total)
		}
	}
	sm, err := c.agreedSlots(ctx)
	if err != nil {
		return err
	}
	covered, masters := 0, map[string]bool{}
	for _, r := range sm {
		covered += r.end - r.start + 1
		masters[r.nodes[0]] = true
		if len(r.nodes) != 1+c.replicas {
			return fmt.Errorf("slots %d-%d: served by %v, want a master and %d replicas", r.start, r.end, r.nodes, c.replicas)
		}
	}
	if covered != numSlots || len(masters) != c.masters {
		return fmt.Errorf("%d slots covered by %d masters, want %d by %d", covered, len(masters), numSlots, c.masters)
	}
	for i, a := range c.admin {
		if masters[c.nodes[i].Addr()] {
			continue
		}
		info, err := a.Info(ctx, "replication").Result()
		if err != nil {
			return fmt.Errorf("%s: INFO replication: %w", c.nodes[i].Addr(), err)
		}
		if f := parseInfo(info); f["role"] != "slave" || f["master_link_status"] != "up" {
			return fmt.Errorf("%s: role:%s master_link_status:%s (want a replica in sync)", c.nodes[i].Addr(), f["role"], f["master_link_status"])
		}
	}
	return nil
}

// slotRange is one row of CLUSTER SLOTS: a range and the addresses serving
// it, master first.
type slotRange struct {
	start, end int
	nodes      []string
}

// slotMap is CLUSTER SLOTS sorted by start, replicas sorted by address.
type slotMap []slotRange

func (sm slotMap) find(slot int) (slotRange, bool) {
	for _, r := range sm {
		if r.start <= slot && slot <= r.end {
			return r, true
		}
	}
	return slotRange{}, false
}

func (sm slotMap) String() string {
	var b strings.Builder
	for _, r := range sm {
		fmt.Fprintf(&b, "%d-%d:%s;", r.start, r.end, strings.Join(r.nodes, ","))
	}
	return b.String()
}

// agreedSlots returns the slot map on which every node agrees, or an error
// naming two nodes that disagree.
func (c *Cluster) agreedSlots(ctx context.Context) (slotMap, error) {
	var first slotMap
	for i, a := range c.admin {
		slots, err := a.ClusterSlots(ctx).Result()
		if err != nil {
			return nil, fmt.Errorf("%s: CLUSTER SLOTS: %w", c.nodes[i].Addr(), err)
		}
		sm := make(slotMap, 0, len(slots))
		for _, s := range slots {
			r := slotRange{start: int(s.Start), end: int(s.End)}
			for _, n := range s.Nodes {
				r.nodes = append(r.nodes, n.Addr)
			}
			if len(r.nodes) == 0 {
				return nil, fmt.Errorf("%s: slots %d-%d have no node", c.nodes[i].Addr(), r.start, r.end)
			}
			slices.Sort(r.nodes[1:])
			sm = append(sm, r)
		}
		slices.SortFunc(sm, func(a, b slotRange) int { return a.start - b.start })
		if i == 0 {
			first = sm
		} else if sm.String() != first.String() {
			return nil, fmt.Errorf("nodes disagree on the slots: %s says %s, %s says %s", c.nodes[0].Addr(), first, c.nodes[i].Addr(), sm)
		}
	}
	return first, nil
}

// keySlot asks the first node that answers for CLUSTER KEYSLOT key.
func (c *Cluster) keySlot(ctx context.Context, key string) (int, error) {
	var err error
	for _, a := range c.admin {
		var slot int64
		if slot, err = a.ClusterKeySlot(ctx, key).Result(); err == nil {
			return int(slot), nil
		}
	}
	return 0, err
}

func (c *Cluster) adminFor(addr string) *redis.Client {
	for i, s := range c.nodes {
		if s.Addr() == addr {
			return c.admin[i]
		}
	}
	return nil
}

// infoField returns one field of an INFO section.
func infoField(ctx context.Context, rdb *redis.Client, section, field string) (string, error) {
	info, err := rdb.Info(ctx, section).Result()
	if err != nil {
		return "", err
	}
	return parseInfo(info)[field], nil
}

// parseInfo parses the "field:value" lines of INFO and CLUSTER INFO.
func parseInfo(info string) map[string]string {
	f := make(map[string]string)
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			f[k] = v
		}
	}
	return f
}

// pause waits one polling interval; it reports false if ctx ended instead.
func pause(ctx context.Context) bool {
	t := time.NewTimer(clusterPoll)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
