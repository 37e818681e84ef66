//go:build linux

package chaos

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// role is what a worker does: its group, handler and output stream.
type role struct {
	group   string
	handler string
	out     string
	pace    string // pace file of the group
}

// slot is one consumer name in a group. It normally has one live process;
// during a duplicate-identity fault it has two.
type slot struct {
	name    string
	role    *role
	batch   int
	retries int
	env     []string // extra environment of its processes (handler options)
	exits   int      // the code its processes may exit with on their own (0: none)
	procs   []*proc  // live processes under this name, oldest first
}

// proc is one worker process: one incarnation of a slot.
type proc struct {
	id      string // name.incarnation
	pid     int
	logPath string
	cmd     *exec.Cmd
	ready   chan struct{} // closed when the worker printed readyLine
	held    chan struct{} // closed when the worker printed holdLine
	done    chan struct{} // closed once the process exited and was reaped
	exitErr error         // valid after done
	exits   int           // the slot's exits when started

	killed     atomic.Bool // the harness sent SIGKILL: any exit is expected
	terminated atomic.Bool // the harness sent SIGTERM: exit 0 is expected
	stopped    bool        // SIGSTOPped by the harness (test goroutine only)
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// cluster owns every worker process of a run. Its methods are called from
// the test goroutine only.
type cluster struct {
	t      *testing.T
	dir    string // logs and pace files
	base   []string
	slots  []*slot
	all    []*proc
	incarn map[string]int
}

// newCluster returns an empty cluster whose processes are killed when the
// test ends, whatever its outcome.
func newCluster(t *testing.T, dir string, base []string) *cluster {
	c := &cluster{t: t, dir: dir, base: base, incarn: make(map[string]int)}
	t.Cleanup(c.killAll)
	return c
}

// start starts a new process for s, under s's name, and returns it without
// waiting for it to be ready.
func (c *cluster) start(s *slot) *proc {
	c.t.Helper()
	c.incarn[s.name]++
	id := fmt.Sprintf("%s.%d", s.name, c.incarn[s.name])
	p := &proc{
		id:      id,
		logPath: filepath.Join(c.dir, id+".log"),
		ready:   make(chan struct{}),
		held:    make(chan struct{}),
		done:    make(chan struct{}),
		exits:   s.exits,
	}
	f, err := os.Create(p.logPath)
	if err != nil {
		c.t.Fatalf("chaos: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestChaosWorker$", "-test.count=1")
	cmd.Env = append(os.Environ(), c.base...)
	cmd.Env = append(cmd.Env,
		envRole+"=worker",
		envConsumer+"="+s.name,
		envGroup+"="+s.role.group,
		envHandler+"="+s.role.handler,
		envOut+"="+s.role.out,
		envPace+"="+s.role.pace,
		fmt.Sprintf("%s=%d", envBatch, s.batch),
		fmt.Sprintf("%s=%d", envRetries, s.retries),
	)
	cmd.Env = append(cmd.Env, s.env...)
	w := &readyWriter{f: f, marks: []mark{{line: readyLine, ch: p.ready}, {line: holdLine, ch: p.held}}}
	cmd.Stdout, cmd.Stderr = w, w
	// The kernel kills a worker whose test binary died without cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		c.t.Fatalf("chaos: start worker %s: %v", id, err)
	}
	p.cmd, p.pid = cmd, cmd.Process.Pid
	go func() {
		err := cmd.Wait()
		f.Close()
		p.exitErr = err
		close(p.done)
	}()
	c.all = append(c.all, p)
	s.procs = append(s.procs, p)
	return p
}

// waitReady waits until p reports its consumer ready, p exits, or timeout.
func (c *cluster) waitReady(p *proc, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.ready:
		return nil
	case <-p.done:
		return fmt.Errorf("worker %s (pid %d) exited before it was ready: %v", p.id, p.pid, p.exitErr)
	case <-t.C:
		return fmt.Errorf("worker %s (pid %d) not ready after %v", p.id, p.pid, timeout)
	}
}

// waitHeld waits until p's handler holds the entry it was told to block on
// (envHoldAt), p exits, or timeout.
func (c *cluster) waitHeld(p *proc, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.held:
		return nil
	case <-p.done:
		return fmt.Errorf("worker %s (pid %d) exited before its handler held an entry: %v", p.id, p.pid, p.exitErr)
	case <-t.C:
		return fmt.Errorf("worker %s (pid %d): its handler held no entry after %v", p.id, p.pid, timeout)
	}
}

// exitedAsTold reports whether p exited on its own with the code its slot
// allows (a handler that kills its process).
func (p *proc) exitedAsTold() bool {
	var ee *exec.ExitError
	return p.exits != 0 && p.exited() && errors.As(p.exitErr, &ee) && ee.ExitCode() == p.exits
}

// kill SIGKILLs p, waits for it to be reaped and removes it from s.
func (c *cluster) kill(s *slot, p *proc) {
	c.t.Helper()
	p.killed.Store(true)
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		c.t.Errorf("chaos: worker %s (pid %d) still alive 10s after SIGKILL", p.id, p.pid)
	}
	p.stopped = false
	s.procs = slices.DeleteFunc(s.procs, func(q *proc) bool { return q == p })
}

// pause SIGSTOPs p; resume SIGCONTs it.
func (c *cluster) pause(p *proc) {
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err == nil {
		p.stopped = true
	}
}

func (c *cluster) resume(p *proc) {
	p.cmd.Process.Signal(syscall.SIGCONT)
	p.stopped = false
}

// live returns every process the harness has not killed, in start order.
func (c *cluster) live() []*proc {
	var ps []*proc
	for _, s := range c.slots {
		ps = append(ps, s.procs...)
	}
	return ps
}

func (c *cluster) pauseAll() {
	for _, p := range c.live() {
		c.pause(p)
	}
}

func (c *cluster) resumeAll() {
	for _, p := range c.live() {
		c.resume(p)
	}
}

// terminateAll sends SIGTERM to every live process at once and waits for
// each to exit. A process that has not exited after timeout is sent SIGQUIT
// (the Go runtime dumps its goroutines into its log) and then SIGKILL; it is
// returned as hung.
func (c *cluster) terminateAll(timeout time.Duration) (hung []*proc) {
	ps := c.live()
	for _, p := range ps {
		// A worker restarted just before the end may not have installed its
		// SIGTERM handler yet: the signal would kill it outright. Wait for it
		// to be ready (or gone) first.
		p.cmd.Process.Signal(syscall.SIGCONT)
		_ = c.waitReady(p, 20*time.Second)
	}
	for _, p := range ps {
		p.terminated.Store(true)
		p.cmd.Process.Signal(syscall.SIGCONT)
		p.cmd.Process.Signal(syscall.SIGTERM)
		p.stopped = false
	}
	deadline := time.After(timeout)
	for _, p := range ps {
		select {
		case <-p.done:
			continue
		case <-deadline:
		}
		if p.exited() {
			continue
		}
		hung = append(hung, p)
	}
	for _, p := range hung {
		p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.killed.Store(true)
			p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.done
		}
	}
	for _, s := range c.slots {
		s.procs = nil
	}
	return hung
}

// dumpAll sends SIGQUIT to every live process, so that the Go runtime
// writes its goroutines into the log and exits, and waits for them (then
// SIGKILLs what is left). It returns the processes it signalled.
func (c *cluster) dumpAll() []*proc {
	ps := c.live()
	for _, p := range ps {
		p.killed.Store(true)
		p.cmd.Process.Signal(syscall.SIGCONT)
		p.cmd.Process.Signal(syscall.SIGQUIT)
	}
	for _, p := range ps {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.done
		}
	}
	for _, s := range c.slots {
		s.procs = nil
	}
	return ps
}

// killAll SIGKILLs every process still running and reaps it. It runs as a
// cleanup, also when the test failed half-way.
func (c *cluster) killAll() {
	for _, p := range c.all {
		if p.exited() {
			continue
		}
		p.killed.Store(true)
		p.cmd.Process.Signal(syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			c.t.Errorf("chaos: worker %s (pid %d) survived SIGKILL", p.id, p.pid)
		}
	}
}

// problems lists the processes that exited in a way the harness did not
// cause or expect: a crash, a Run error, a non-zero exit after SIGTERM.
func (c *cluster) problems() []string {
	var out []string
	for _, p := range c.all {
		if !p.exited() || p.killed.Load() || p.exitedAsTold() {
			continue
		}
		switch {
		case !p.terminated.Load():
			out = append(out, fmt.Sprintf("worker %s (pid %d) exited on its own: %v (log %s)", p.id, p.pid, p.exitErr, p.logPath))
		case p.exitErr != nil:
			out = append(out, fmt.Sprintf("worker %s (pid %d) exited with %v after SIGTERM (log %s)", p.id, p.pid, p.exitErr, p.logPath))
		}
	}
	return out
}

// logFindings scans every worker log for signs of a bug: data races,
// panics, fatal errors.
func (c *cluster) logFindings() []string {
	var out []string
	for _, p := range c.all {
		b, err := os.ReadFile(p.logPath)
		if err != nil {
			continue
		}
		for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:", "--- FAIL"} {
			if bytes.Contains(b, []byte(bad)) {
				out = append(out, fmt.Sprintf("worker %s: %q in %s", p.id, bad, p.logPath))
			}
		}
	}
	return out
}

// logCounted maps library log messages to the names they are counted
// under by events: evidence that faults hit commits in flight.
var logCounted = map[string]string{
	"script reply lost; retrying": "commit-retried",
	"commit outcome unknown":      "commit-unknown",
}

// events counts the observer events in every worker log, by kind, and the
// log lines of logCounted.
func (c *cluster) events() map[string]int {
	n := make(map[string]int)
	for _, p := range c.all {
		f, err := os.Open(p.logPath)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if rest, ok := strings.CutPrefix(line, eventPrefix); ok {
				kind, _, _ := strings.Cut(rest, " ")
				n[kind]++
				continue
			}
			switch {
			case strings.HasPrefix(line, refusedPrefix):
				n["refused"]++
			case strings.HasPrefix(line, orderPrefix):
				n["handler-inversion"]++
			}
			for msg, name := range logCounted {
				if strings.Contains(line, msg) {
					n[name]++
				}
			}
		}
		f.Close()
	}
	return n
}

// lines returns the lines of every worker log that start with prefix, each
// preceded by the worker's ID.
func (c *cluster) lines(prefix string) []string {
	var out []string
	for _, p := range c.all {
		out = append(out, p.lines(prefix)...)
	}
	return out
}

// lines returns the lines of p's log that start with prefix, each preceded
// by p's ID.
func (p *proc) lines(prefix string) []string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, prefix) {
			out = append(out, p.id+": "+line)
		}
	}
	return out
}

// readyWriter copies a worker's output to its log file and closes the
// channel of each mark when its line goes by. exec calls Write from one
// goroutine at a time because stdout and stderr share it.
type readyWriter struct {
	f     *os.File
	marks []mark
	line  []byte // the unfinished last line, while a mark is unseen
}

// mark is a line the harness waits for.
type mark struct {
	line string
	ch   chan struct{}
}

func (w *readyWriter) Write(b []byte) (int, error) {
	// A failed log write must not stop the copy: the worker would block on
	// a full pipe.
	w.f.Write(b)
	if len(w.marks) == 0 {
		return len(b), nil
	}
	w.line = append(w.line, b...)
	unseen := w.marks[:0]
	for _, m := range w.marks {
		if bytes.Contains(w.line, []byte(m.line)) {
			close(m.ch)
			continue
		}
		unseen = append(unseen, m)
	}
	w.marks = unseen
	if len(w.marks) == 0 {
		w.line = nil
	} else if i := bytes.LastIndexByte(w.line, '\n'); i >= 0 {
		w.line = append(w.line[:0], w.line[i+1:]...)
	}
	return len(b), nil
}
