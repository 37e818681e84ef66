// Package redistest finds or starts a Redis server for integration tests.
//
// # Finding Redis
//
// [Client] and [Addr] use the server named by the REDIS_ADDR environment
// variable. Without it, they start one redis-server from PATH per test binary,
// on a free loopback port, the first time a test asks for it. A package that
// uses them must stop that server when its tests end by calling [Main] from
// TestMain:
//
//	func TestMain(m *testing.M) { redistest.Main(m) }
//
// When no Redis can be had, tests skip with a message saying how to run them,
// or fail instead when STREAMTX_REQUIRE_REDIS=1 (CI sets it).
//
// # Keys
//
// Tests share the server, so each one works under its own key prefix from
// [Prefix], whose keys are deleted when the test ends.
//
// # Private servers
//
// Tests that restart, kill or pause Redis start their own with [StartServer].
package redistest

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// startTimeout bounds how long a server may take to answer PING.
	startTimeout = 10 * time.Second
	// stopTimeout bounds a graceful stop before falling back to SIGKILL.
	stopTimeout = 10 * time.Second
	// cleanupTimeout bounds the key deletion run by Prefix and Cleanup.
	cleanupTimeout = 10 * time.Second
)

// shared is the server started lazily by Addr for the whole test binary and
// stopped by Main.
var shared struct {
	mu      sync.Mutex
	started bool // a start was attempted; err or srv holds the outcome
	srv     *Server
	err     error
}

// Main runs the tests and then stops the server that [Client] or [Addr] may
// have started, and exits with the tests' code. Call it from TestMain in every
// package that uses Client or Addr.
func Main(m *testing.M) {
	code := m.Run()
	shared.mu.Lock()
	if srv := shared.srv; srv != nil {
		srv.Stop()
		os.RemoveAll(srv.dir)
	}
	shared.mu.Unlock()
	os.Exit(code)
}

// Addr returns the address of the shared test server: REDIS_ADDR if set,
// otherwise a redis-server from PATH started once per test binary. It skips
// the test, or fails it when STREAMTX_REQUIRE_REDIS=1, if that server does not
// answer PING.
func Addr(t testing.TB) string {
	t.Helper()
	addr, err := sharedAddr()
	if err == nil {
		err = ping(addr)
	}
	if err != nil {
		unavailable(t, err)
	}
	return addr
}

// Client returns a client for the shared test server (see [Addr]), closed when
// the test ends.
func Client(t testing.TB) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: Addr(t)})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func sharedAddr() (string, error) {
	if addr := os.Getenv("REDIS_ADDR"); addr != "" {
		return addr, nil
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.started {
		shared.started = true
		shared.srv, shared.err = startShared()
	}
	if shared.err != nil {
		return "", shared.err
	}
	return shared.srv.Addr(), nil
}

func startShared() (*Server, error) {
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return nil, err
	}
	srv, err := newServer(dir, nil)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return srv, nil
}

// unavailable skips t because no Redis can be had, or fails it when
// STREAMTX_REQUIRE_REDIS=1.
func unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("STREAMTX_REQUIRE_REDIS") == "1" {
		t.Fatalf("redistest: no Redis and STREAMTX_REQUIRE_REDIS=1: %v", err)
	}
	t.Skipf("integration test: set REDIS_ADDR=host:port or put redis-server on PATH (%v)", err)
}

// Prefix returns a key prefix unique to this test, such as
// "t:TestName_sub:1a2b3c4d:", and deletes every key that starts with it, or
// with "stx:{" followed by it (the keys streamtx derives from a stream name),
// when the test ends. The prefix holds no glob metacharacters and no braces,
// so it can be used verbatim in a pattern for [Cleanup].
func Prefix(t testing.TB, rdb redis.UniversalClient) string {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	prefix := "t:" + sanitize(t.Name()) + ":" + hex.EncodeToString(b[:]) + ":"
	Cleanup(t, rdb, globEscape(prefix)+"*", "stx:{"+globEscape(prefix)+"*")
	return prefix
}

// Cleanup deletes the keys matching each glob pattern (as in SCAN MATCH) when
// the test ends. Failures are logged, not reported as test failures: a test
// that killed its server has no keys left to delete.
func Cleanup(t testing.TB, rdb redis.UniversalClient, patterns ...string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		for _, pattern := range patterns {
			if err := deleteMatching(ctx, rdb, pattern); err != nil {
				t.Logf("redistest: deleting keys matching %q: %v", pattern, err)
			}
		}
	})
}

// deleteMatching deletes the keys matching pattern, on every master of a
// cluster. Keys are unlinked one by one so that keys of different slots never
// share a command.
func deleteMatching(ctx context.Context, rdb redis.UniversalClient, pattern string) error {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return deleteMatching(ctx, node, pattern)
		})
	}
	var cursor uint64
	for {
		keys, next, err := rdb.Scan(ctx, cursor, pattern, 1000).Result()
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			pipe := rdb.Pipeline()
			for _, k := range keys {
				pipe.Unlink(ctx, k)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// sanitize keeps the characters of a test name that are safe in a key and in
// a glob, replaces the others with '_', and bounds the length.
func sanitize(name string) string {
	const maxLen = 64
	b := []byte(name)
	for i, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '_', c == '-', c == '.', c == '/':
		default:
			b[i] = '_'
		}
	}
	if len(b) > maxLen {
		b = b[:maxLen]
	}
	return string(b)
}

// globEscape escapes the characters that are special in a Redis glob.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Server is a redis-server process of one test, for tests that restart, kill
// or pause Redis. Its methods are safe for concurrent use.
type Server struct {
	tb   testing.TB // reports errors of Pause and Resume; nil for the shared server
	port int
	dir  string
	args []string // extra arguments given to StartServer
	tls  *TLS     // non-nil for a server that listens with TLS only (StartTLSServer)

	mu   sync.Mutex
	proc *process // nil while stopped
}

// process is one run of redis-server.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
}

// StartServer starts a redis-server from PATH on a free loopback port, with
// its own temporary directory (--dir) and no RDB snapshots (--save "") unless
// args set --save. Extra args are appended to the command line, for example
// "--appendonly", "yes", "--appendfsync", "always". It waits until the server
// answers PING and stops it when the test ends. Without redis-server on PATH,
// it skips the test, or fails it when STREAMTX_REQUIRE_REDIS=1.
func StartServer(t testing.TB, args ...string) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		unavailable(t, err)
	}
	s, err := newServer(t.TempDir(), args)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	s.tb = t
	t.Cleanup(s.Stop)
	return s
}

// newServer starts a server in dir on a free port, trying another port if
// someone else took the one it picked.
func newServer(dir string, args []string) (*Server, error) {
	const attempts = 5
	var err error
	for range attempts {
		s := &Server{dir: dir, args: args}
		if s.port, err = freePort(); err != nil {
			return nil, err
		}
		if s.proc, err = s.launch(); err == nil {
			return s, nil
		}
		if !errors.Is(err, errAddrInUse) {
			return nil, err
		}
	}
	return nil, err
}

// Addr returns the server's address, "127.0.0.1:port". It stays the same
// across restarts.
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Pid returns the process id of the running server, or 0 when it is stopped.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// Client returns a client for the server, closed when the test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	opts := &redis.Options{Addr: s.Addr()}
	if s.tls != nil {
		opts.TLSConfig = s.tls.ClientConfig()
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// Kill kills the server with SIGKILL, as a crash would, and waits for it to
// exit. It does nothing if the server is stopped.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.proc.kill()
		s.proc = nil
	}
}

// Stop stops the server gracefully with SIGTERM (resuming it first if paused)
// and waits for it to exit, killing it if it takes longer than 10s. It does
// nothing if the server is stopped.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.proc.stop()
		s.proc = nil
	}
}

// Restart starts the server again on the same port and directory with the
// same arguments, stopping it first if it is running, and waits until it
// answers PING. It retries while the port is still held by the old process's
// sockets, and fails the test if the server cannot be started within 10s.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.proc.stop()
		s.proc = nil
	}
	deadline := time.Now().Add(startTimeout)
	for {
		proc, err := s.launch()
		if err == nil {
			s.proc = proc
			return
		}
		if !errors.Is(err, errAddrInUse) || time.Now().After(deadline) {
			t.Fatalf("redistest: restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling for the port to be free
	}
}

// Pause stops the server process with SIGSTOP: it keeps its connections but
// answers nothing until [Server.Resume].
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a server stopped by [Server.Pause] with SIGCONT.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := errors.New("server is not running")
	if s.proc != nil {
		err = s.proc.cmd.Process.Signal(sig)
	}
	if err != nil && s.tb != nil {
		s.tb.Errorf("redistest: %v: %v", sig, err)
	}
}

// errAddrInUse is returned by launch when the port is taken.
var errAddrInUse = errors.New("address already in use")

// launch starts redis-server on s.port and waits until it answers PING. Its
// output is appended to redis.log in s.dir and quoted in the error if it
// fails to start.
func (s *Server) launch() (*process, error) {
	args := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--dir", s.dir, "--appendonly", "no",
	}
	var tc *tls.Config
	if s.tls != nil {
		args[1] = "0" // no plain TCP
		args = append(args, s.tls.serverArgs(s.port)...)
		tc = s.tls.ClientConfig()
	}
	if !slices.Contains(s.args, "--save") {
		args = append(args, "--save", "")
	}
	args = append(args, s.args...)

	return startProcessTLS(s.Addr(), tc, filepath.Join(s.dir, "redis.log"), args...)
}

// startProcess starts redis-server with args, logging to logPath, and waits
// until it answers PING at addr — checking that the answer comes from this
// process, not from another that took the port first.
func startProcess(addr, logPath string, args ...string) (*process, error) {
	return startProcessTLS(addr, nil, logPath, args...)
}

// startProcessTLS is startProcess for a server that answers at addr with
// TLS when tc is not nil.
func startProcessTLS(addr string, tc *tls.Config, logPath string, args ...string) (*process, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	logStart, _ := log.Seek(0, io.SeekEnd)
	cmd := exec.Command("redis-server", args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		log.Close()
		close(p.done)
	}()

	err = waitReady(addr, tc, p.done)
	if err == nil {
		if pid, perr := serverPidTLS(addr, tc); perr != nil || pid != cmd.Process.Pid {
			err = fmt.Errorf("%w (pid %d answers on its port)", errAddrInUse, pid)
		}
	}
	if err != nil {
		p.kill()
		out := readFrom(logPath, logStart)
		if strings.Contains(out, "Address already in use") {
			err = errAddrInUse
		}
		return nil, fmt.Errorf("redis-server %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return p, nil
}

func (p *process) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

func (p *process) stop() {
	p.cmd.Process.Signal(syscall.SIGCONT)
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		p.kill()
	}
}

// waitReady polls addr with PING until it answers PONG, the process exits
// (done is closed) or startTimeout passes.
func waitReady(addr string, tc *tls.Config, done <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := pingTLS(addr, tc)
		if err == nil {
			return nil
		}
		select {
		case <-done:
			return errors.New("exited before answering PING")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PONG within %v: %w", startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond) // polling for the server to listen
	}
}

// ping sends PING to addr over a fresh connection and expects PONG. A server
// still loading its data answers -LOADING, which is an error here.
func ping(addr string) error { return pingTLS(addr, nil) }

// pingTLS is ping over TLS when tc is not nil.
func pingTLS(addr string, tc *tls.Config) error {
	var conn net.Conn
	var err error
	if tc != nil {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, tc)
	} else {
		conn, err = net.DialTimeout("tcp", addr, time.Second)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING: %q", strings.TrimSpace(line))
	}
	return nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// readFrom returns the contents of the file at path from offset on, or the
// error reading it.
func readFrom(path string, offset int64) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if offset > int64(len(b)) {
		offset = 0
	}
	return string(b[offset:])
}
