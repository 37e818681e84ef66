package redistest

import (
	"context"
	"errors"
	"fmt"
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
	// MasterName is the name under which a [Sentinel]'s sentinels monitor
	// its master.
	MasterName = "mymaster"
	// numSentinels is how many sentinels StartSentinel runs; a quorum is 2.
	numSentinels = 3
	// sentinelTimeout bounds starting a sentinel set-up and one failover.
	// Sentinel turns a demoted master into a replica only some 8s after
	// the failover (4 publish periods), so this is well above that.
	sentinelTimeout = 40 * time.Second
	// failoverAskRetry is how long Failover waits for a failover to start
	// before asking again.
	failoverAskRetry = 5 * time.Second
)

// Sentinel is a master, its replicas and three Redis Sentinels that monitor
// it, all redis-server processes private to one test, for tests of
// clients that follow a Sentinel failover. Its methods are safe for
// concurrent use; those that take a testing.TB must be called from the
// test's goroutine.
type Sentinel struct {
	tb        testing.TB
	nodes     []*Server // the first one started as the master
	sentinels []*sentinelProc
	admin     []*redis.Client         // one per node
	sadmin    []*redis.SentinelClient // one per sentinel
	stopOnce  sync.Once
}

// sentinelProc is one `redis-server --sentinel` process.
type sentinelProc struct {
	port int
	dir  string
	proc *process
}

func (s *sentinelProc) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// StartSentinel starts a master and replicas replicas of it, each a
// redis-server with its own directory and no persistence, and three
// sentinels (`redis-server <conf> --sentinel`, each with a generated config
// in its own directory) that monitor the master as [MasterName] with a
// quorum of 2, down-after-milliseconds 1000 and failover-timeout 3000, all
// on free loopback ports. It returns once every replica is in sync, and
// every sentinel knows the master, every replica and the two other
// sentinels. Every process is stopped when the test ends.
//
// Without redis-server on PATH, StartSentinel skips the test, or fails it
// when STREAMTX_REQUIRE_REDIS=1.
func StartSentinel(t testing.TB, replicas int) *Sentinel {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		unavailable(t, err)
	}
	if replicas < 1 {
		t.Fatalf("redistest: StartSentinel(%d): a failover needs at least one replica", replicas)
	}
	s := &Sentinel{tb: t}
	t.Cleanup(s.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), sentinelTimeout)
	defer cancel()

	// Replication settings as for cluster nodes: sync at once, ping often.
	base := []string{"--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1"}
	master, err := newOwnServer(t.TempDir(), base)
	if err != nil {
		t.Fatalf("redistest: starting the master: %v", err)
	}
	master.tb = t
	s.nodes = append(s.nodes, master)
	replicaArgs := append(slices.Clone(base), "--replicaof", "127.0.0.1", strconv.Itoa(master.port))
	nodes := make([]*Server, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		dir := t.TempDir()
		wg.Go(func() { nodes[i], errs[i] = newOwnServer(dir, replicaArgs) })
	}
	wg.Wait()
	for _, n := range nodes {
		if n != nil {
			n.tb = t
			s.nodes = append(s.nodes, n)
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("redistest: starting replicas: %v", err)
	}
	for _, n := range s.nodes {
		s.admin = append(s.admin, redis.NewClient(&redis.Options{
			Addr: n.Addr(), MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 2 * time.Second,
		}))
	}
	// A sentinel learns the replicas from the master's INFO, which it asks
	// for on connecting and then every 10s: start the sentinels once every
	// replica is in sync, so that the first INFO lists them all.
	if err := s.waitReplicas(ctx, master.Addr()); err != nil {
		t.Fatalf("redistest: replicas of %s not in sync: %v", master.Addr(), err)
	}

	s.sentinels = make([]*sentinelProc, numSentinels)
	errs = make([]error, numSentinels)
	for i := range numSentinels {
		dir := t.TempDir()
		wg.Go(func() { s.sentinels[i], errs[i] = newSentinelProc(dir, master.port) })
	}
	wg.Wait()
	s.sentinels = slices.DeleteFunc(s.sentinels, func(p *sentinelProc) bool { return p == nil })
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("redistest: starting sentinels: %v", err)
	}
	for _, p := range s.sentinels {
		s.sadmin = append(s.sadmin, redis.NewSentinelClient(&redis.Options{
			Addr: p.addr(), MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 2 * time.Second,
		}))
	}

	if err := s.waitSettled(ctx, master.Addr(), true); err != nil {
		t.Fatalf("redistest: sentinel set-up did not settle: %v\n%s", err, s.logs())
	}
	return s
}

// newOwnServer is newServer, checking that the server answering on the
// port is the one it started: two servers started at once may be given one
// free port, and then the one that failed to listen seems ready because the
// other answers its PING.
func newOwnServer(dir string, args []string) (*Server, error) {
	const attempts = 5
	var err error
	for range attempts {
		var s *Server
		if s, err = newServer(dir, args); err != nil {
			return nil, err
		}
		pid, own := 0, s.Pid()
		if pid, err = serverPid(s.Addr()); err == nil && pid == own {
			return s, nil
		}
		s.Stop()
		if err == nil {
			err = fmt.Errorf("redis-server on %s: pid %d answers, not %d", s.Addr(), pid, own)
		}
	}
	return nil, err
}

// newSentinelProc writes a sentinel config into dir and starts a sentinel
// on a free port with it, trying another port if someone else took the one
// it picked.
func newSentinelProc(dir string, masterPort int) (*sentinelProc, error) {
	const attempts = 5
	var err error
	for range attempts {
		p := &sentinelProc{dir: dir}
		if p.port, err = freePort(); err != nil {
			return nil, err
		}
		if p.proc, err = p.launch(masterPort); err == nil {
			return p, nil
		}
		if !errors.Is(err, errAddrInUse) {
			return nil, err
		}
	}
	return nil, err
}

// launch starts the sentinel and waits until it answers PING. Its output
// goes to sentinel.log in its directory, quoted in the error if it fails to
// start.
func (p *sentinelProc) launch(masterPort int) (*process, error) {
	conf := filepath.Join(p.dir, "sentinel.conf")
	text := strings.Join([]string{
		"port " + strconv.Itoa(p.port),
		"bind 127.0.0.1",
		"dir " + p.dir,
		"sentinel resolve-hostnames no",
		fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 2", MasterName, masterPort),
		"sentinel down-after-milliseconds " + MasterName + " 1000",
		"sentinel failover-timeout " + MasterName + " 3000",
		"",
	}, "\n")
	// Sentinel rewrites its config file, so each launch starts afresh.
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	return startProcess(p.addr(), filepath.Join(p.dir, "sentinel.log"), conf, "--sentinel")
}

// serverPid returns the process_id that the server at addr reports.
func serverPid(addr string) (int, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
	defer rdb.Close()
	info, err := rdb.Info(context.Background(), "server").Result()
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(parseInfo(info)["process_id"])
}

// logs returns the end of every sentinel's log, for failure messages.
func (s *Sentinel) logs() string {
	const maxLines = 40
	var b strings.Builder
	for _, p := range s.sentinels {
		lines := strings.Split(strings.TrimSpace(readFrom(filepath.Join(p.dir, "sentinel.log"), 0)), "\n")
		lines = lines[max(0, len(lines)-maxLines):]
		fmt.Fprintf(&b, "sentinel %s log:\n  %s\n", p.addr(), strings.Join(lines, "\n  "))
	}
	return b.String()
}

// SentinelAddrs returns the address of every sentinel.
func (s *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.sentinels))
	for i, p := range s.sentinels {
		addrs[i] = p.addr()
	}
	return addrs
}

// Nodes returns the master and replica servers, the one started as the
// master first, for tests that kill, pause or restart one.
func (s *Sentinel) Nodes() []*Server { return slices.Clone(s.nodes) }

// FailoverClient returns a client that finds the master through the
// sentinels (redis.NewFailoverClient) and follows it across failovers,
// closed when the test ends.
func (s *Sentinel) FailoverClient(t testing.TB) *redis.Client {
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:    MasterName,
		SentinelAddrs: s.SentinelAddrs(),
	})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// MasterAddr returns the master's address on which every sentinel agrees
// (SENTINEL GET-MASTER-ADDR-BY-NAME), polling while they disagree. It fails
// the test if they do not agree within 40s.
func (s *Sentinel) MasterAddr() string {
	s.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sentinelTimeout)
	defer cancel()
	for {
		addr, err := s.agreedMaster(ctx)
		if err == nil {
			return addr
		}
		if !pause(ctx) {
			s.tb.Fatalf("redistest: sentinels' master: %v", err)
			return ""
		}
	}
}

// Failover asks a sentinel for a failover (SENTINEL FAILOVER, which
// promotes a replica without waiting for the master to be seen down or for
// the other sentinels to agree). Replication is asynchronous and the old
// master is not stopped: the promoted replica may lack the master's newest
// writes, and the old master takes writes until its clients hear of the
// switch; both kinds are lost when it becomes a replica. Failover returns
// once every sentinel names the new master and lists every other node, the
// old master included, as its replica; the new master says role master;
// and every other node says it is a replica of it in sync. Sentinel
// demotes the old master only some 8s after the switch, so a failover
// takes about 11s. It fails the test if it takes more than 40s.
func (s *Sentinel) Failover(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sentinelTimeout)
	defer cancel()
	old, err := s.agreedMaster(ctx)
	if err != nil {
		t.Fatalf("redistest: failover: %v", err)
	}
	if err := s.waitSettled(ctx, old, false); err != nil {
		t.Fatalf("redistest: failover: not settled before: %v", err)
	}
	// ask asks for a failover until a sentinel takes it on. It answers
	// NOGOODSLAVE while it has seen no replica fit to be promoted, and
	// INPROG while a failover is under way.
	ask := func() {
		for {
			err := s.sadmin[0].Failover(ctx, MasterName).Err()
			if err == nil || redis.HasErrorPrefix(err, "INPROG") {
				return
			}
			if !pause(ctx) {
				t.Fatalf("redistest: SENTINEL FAILOVER %s: %v", MasterName, err)
			}
		}
	}
	ask()
	asked := time.Now()
	for {
		addr, err := s.agreedMaster(ctx)
		switch {
		case err != nil:
		case addr == old:
			err = fmt.Errorf("sentinels still name %s", old)
			if time.Since(asked) > failoverAskRetry {
				// The failover was given up (no replica fit after all).
				t.Logf("redistest: no failover from %s after %v; asking again", old, time.Since(asked).Round(time.Millisecond))
				ask()
				asked = time.Now()
			}
		default:
			if err := s.waitSettled(ctx, addr, false); err != nil {
				t.Fatalf("redistest: failover %s -> %s did not settle: %v\n%s", old, addr, err, s.logs())
			}
			return
		}
		if !pause(ctx) {
			t.Fatalf("redistest: failover of %s: %v\n%s", old, err, s.logs())
		}
	}
}

// Stop stops every process gracefully (see [Server.Stop]), all at once. It
// is called when the test ends; calling it again does nothing.
func (s *Sentinel) Stop() {
	s.stopOnce.Do(func() {
		for _, a := range s.admin {
			a.Close()
		}
		for _, a := range s.sadmin {
			a.Close()
		}
		var wg sync.WaitGroup
		for _, p := range s.sentinels {
			wg.Go(p.proc.stop)
		}
		for _, n := range s.nodes {
			wg.Go(n.Stop)
		}
		wg.Wait()
	})
}

// agreedMaster returns the master address every sentinel names, or an
// error naming two that disagree.
func (s *Sentinel) agreedMaster(ctx context.Context) (string, error) {
	var first string
	for i, sc := range s.sadmin {
		hp, err := sc.GetMasterAddrByName(ctx, MasterName).Result()
		if err != nil {
			return "", fmt.Errorf("sentinel %s: GET-MASTER-ADDR-BY-NAME: %w", s.sentinels[i].addr(), err)
		}
		if len(hp) != 2 {
			return "", fmt.Errorf("sentinel %s: GET-MASTER-ADDR-BY-NAME: %v", s.sentinels[i].addr(), hp)
		}
		addr := hp[0] + ":" + hp[1]
		if i == 0 {
			first = addr
		} else if addr != first {
			return "", fmt.Errorf("sentinels disagree: %s names %s, %s names %s", s.sentinels[0].addr(), first, s.sentinels[i].addr(), addr)
		}
	}
	return first, nil
}

// waitSettled polls until the set-up is settled with master at addr (see
// settled). It returns the last reason for not being settled when ctx ends.
func (s *Sentinel) waitSettled(ctx context.Context, master string, links bool) error {
	for {
		err := s.settled(ctx, master, links)
		if err == nil {
			return nil
		}
		if !pause(ctx) {
			return err
		}
	}
}

// waitReplicas polls until every node but master says it is a replica of
// master with its link up.
func (s *Sentinel) waitReplicas(ctx context.Context, master string) error {
	for {
		err := s.replicasInSync(ctx, master)
		if err == nil {
			return nil
		}
		if !pause(ctx) {
			return err
		}
	}
}

// settled reports why the set-up is not settled with master at addr: every
// sentinel names it and sees it up, knows the two other sentinels and lists
// every other node, and only those, as a replica of it (with links, also
// with its link to the master up as of the sentinel's last INFO, which
// sentinels refresh only every 10s); the master says role master and every
// other node says it is a replica of master in sync (see replicasInSync).
func (s *Sentinel) settled(ctx context.Context, master string, links bool) error {
	if got, err := s.agreedMaster(ctx); err != nil {
		return err
	} else if got != master {
		return fmt.Errorf("sentinels name %s, not %s", got, master)
	}
	var want []string
	for _, n := range s.nodes {
		if n.Addr() != master {
			want = append(want, n.Addr())
		}
	}
	for i, sc := range s.sadmin {
		addr := s.sentinels[i].addr()
		m, err := sc.Master(ctx, MasterName).Result()
		if err != nil {
			return fmt.Errorf("sentinel %s: SENTINEL MASTER: %w", addr, err)
		}
		if m["flags"] != "master" || m["num-other-sentinels"] != strconv.Itoa(numSentinels-1) {
			return fmt.Errorf("sentinel %s: master flags %q, %s other sentinels (want master, %d)",
				addr, m["flags"], m["num-other-sentinels"], numSentinels-1)
		}
		rs, err := sc.Replicas(ctx, MasterName).Result()
		if err != nil {
			return fmt.Errorf("sentinel %s: SENTINEL REPLICAS: %w", addr, err)
		}
		var got []string
		for _, r := range rs {
			raddr := r["ip"] + ":" + r["port"]
			got = append(got, raddr)
			if r["flags"] != "slave" {
				return fmt.Errorf("sentinel %s: replica %s has flags %q", addr, raddr, r["flags"])
			}
			if links && (r["master-link-status"] != "ok" || r["master-host"]+":"+r["master-port"] != master) {
				return fmt.Errorf("sentinel %s: replica %s: link %q to %s:%s (want ok to %s)",
					addr, raddr, r["master-link-status"], r["master-host"], r["master-port"], master)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			return fmt.Errorf("sentinel %s: replicas %v, want %v", addr, got, want)
		}
	}
	return s.replicasInSync(ctx, master)
}

// replicasInSync reports why the nodes are not a master at master and
// replicas of it in sync: master must say role master, every other node
// role slave of master with master_link_status up.
func (s *Sentinel) replicasInSync(ctx context.Context, master string) error {
	for i, a := range s.admin {
		f, err := a.Info(ctx, "replication").Result()
		if err != nil {
			return fmt.Errorf("%s: INFO replication: %w", s.nodes[i].Addr(), err)
		}
		info := parseInfo(f)
		if s.nodes[i].Addr() == master {
			if info["role"] != "master" {
				return fmt.Errorf("%s: role %s, want master", master, info["role"])
			}
			continue
		}
		if info["role"] != "slave" || info["master_link_status"] != "up" || info["master_host"]+":"+info["master_port"] != master {
			return fmt.Errorf("%s: role:%s master %s:%s master_link_status:%s (want a replica of %s in sync)",
				s.nodes[i].Addr(), info["role"], info["master_host"], info["master_port"], info["master_link_status"], master)
		}
	}
	return nil
}
