// Package faultproxy is a TCP proxy for fault tests: it sits between a client
// and Redis on a loopback port and can cut connections or lose a reply.
//
// # Matching
//
// [Proxy.DropReply] matches the bytes of each single read from the client, so
// it sees a command only if the command is not split across reads. go-redis
// writes one command per write, which a loopback read returns whole; a
// command in a pipeline shares its read with the others. The match covers the
// raw RESP bytes, keys and arguments included: pick a substring only the
// intended command carries, such as "EVALSHA" or "\r\nINCR\r\n". The reply
// lost is the first one read after the matching command is forwarded, which
// is that command's as long as the client waits for each reply before
// sending more on the connection, as go-redis does outside pipelines.
package faultproxy

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// firedBuffer is the capacity of the channel returned by FiredCh.
const firedBuffer = 1024

// Proxy forwards connections accepted on a loopback port to a target address.
// Its methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener
	ctx    context.Context // cancelled by Close, to abort dials to the target
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and both pumps of every link
	fired  chan struct{}

	mu     sync.Mutex
	closed bool
	links  map[*link]struct{}
	drops  []*drop
	nFired int
}

// drop is a request to lose the reply to the next n commands containing substr.
type drop struct {
	substr []byte // lower case
	n      int
}

// link is one proxied connection.
type link struct {
	client, server net.Conn
	dropping       atomic.Bool // the next reply from the server is to be lost
	closeOnce      sync.Once
}

func (l *link) close() {
	l.closeOnce.Do(func() {
		l.client.Close()
		l.server.Close()
	})
}

// New starts a proxy on 127.0.0.1 forwarding to target and closes it when the
// test ends. It fails the test if it cannot listen.
func New(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faultproxy: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target: target,
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		fired:  make(chan struct{}, firedBuffer),
		links:  make(map[*link]struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() { p.Close() })
	return p
}

// Addr returns the address clients should dial, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Conns returns the number of open proxied connections.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// CutAll closes every open connection, on both sides. Commands in flight on
// them fail on the client; new connections are still accepted.
func (p *Proxy) CutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for l := range p.links {
		l.close()
		delete(p.links, l)
	}
}

// DropReplyOnce is DropReply(substr, 1).
func (p *Proxy) DropReplyOnce(substr string) { p.DropReply(substr, 1) }

// DropReply loses the reply to the next n commands whose bytes contain substr,
// matched case-insensitively (see the package doc for the limits of
// matching). For each, the proxy forwards the command to the server, waits
// for the first bytes of its reply, discards them, and closes the connection
// on both sides: the command ran, but the client never learns its result.
// Calls add up: each arms n more losses.
func (p *Proxy) DropReply(substr string, n int) {
	if n <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drops = append(p.drops, &drop{substr: bytes.ToLower([]byte(substr)), n: n})
}

// Fired returns how many replies have been lost so far. A loss is counted
// before its client sees the connection close.
func (p *Proxy) Fired() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nFired
}

// FiredCh returns a channel that receives once each time a reply has been
// lost, after its connection is closed. It holds up to 1024 unreceived
// notifications; beyond that they are dropped, but [Proxy.Fired] still
// counts them.
func (p *Proxy) FiredCh() <-chan struct{} { return p.fired }

// Close stops accepting, closes every connection and waits for the proxy's
// goroutines to end. It is safe to call more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.cancel()
	err := p.ln.Close()
	for l := range p.links {
		l.close()
		delete(p.links, l)
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	var d net.Dialer
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		server, err := d.DialContext(p.ctx, "tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		l := &link{client: client, server: server}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			l.close()
			return
		}
		p.links[l] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.upstream(l)
		go p.downstream(l)
	}
}

// upstream copies client bytes to the server, arming a lost reply when a
// chunk matches a pending drop.
func (p *Proxy) upstream(l *link) {
	defer p.wg.Done()
	defer p.remove(l)
	buf := make([]byte, 32<<10)
	for {
		n, err := l.client.Read(buf)
		if n > 0 {
			if p.matchDrop(buf[:n]) {
				l.dropping.Store(true)
			}
			if _, werr := l.server.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// downstream copies server bytes to the client, or loses them and closes the
// link if a drop is armed.
func (p *Proxy) downstream(l *link) {
	defer p.wg.Done()
	defer p.remove(l)
	buf := make([]byte, 32<<10)
	for {
		n, err := l.server.Read(buf)
		if n > 0 {
			if l.dropping.Load() {
				// Count the loss before the client can see it, and notify
				// once the connection is closed.
				p.mu.Lock()
				p.nFired++
				p.mu.Unlock()
				p.remove(l)
				select {
				case p.fired <- struct{}{}:
				default:
				}
				return
			}
			if _, werr := l.client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// matchDrop reports whether chunk contains the substring of a pending drop,
// and if so uses up one of that drop's losses.
func (p *Proxy) matchDrop(chunk []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.drops) == 0 {
		return false
	}
	lower := bytes.ToLower(chunk)
	for i, d := range p.drops {
		if bytes.Contains(lower, d.substr) {
			if d.n--; d.n == 0 {
				p.drops = append(p.drops[:i], p.drops[i+1:]...)
			}
			return true
		}
	}
	return false
}

// remove closes l and forgets it.
func (p *Proxy) remove(l *link) {
	l.close()
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}
