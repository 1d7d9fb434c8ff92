//go:build linux

package tunneltest

import (
	"net"
	"sync"
	"testing"
)

// Relay is a user-space TCP relay, like a proxy or a NAT gateway that
// terminates TCP. Frozen, it keeps both sockets of every pair open and
// stops forwarding: its kernel still ACKs data and answers keepalive
// probes, so TCP on either end sees nothing wrong. Only an application
// heartbeat can tell.
type Relay struct {
	ln     net.Listener
	target string
	dial   func(string) (*net.TCPConn, error)
	// carry copies one direction (toTarget: from the accepted side);
	// Relay.pipe unless the relay delays (NewDelayRelay).
	carry func(dst, src net.Conn, toTarget bool)

	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// NewRelay forwards connections accepted on ln to target, dialing with dial.
// It stops at cleanup.
func NewRelay(t testing.TB, ln net.Listener, target string, dial func(string) (*net.TCPConn, error)) *Relay {
	return newRelay(t, ln, target, dial, nil)
}

// newRelay is NewRelay carrying each direction with carry (nil: pipe).
func newRelay(t testing.TB, ln net.Listener, target string, dial func(string) (*net.TCPConn, error), carry func(dst, src net.Conn, toTarget bool)) *Relay {
	r := &Relay{ln: ln, target: target, dial: dial, carry: carry, conns: map[net.Conn]struct{}{}}
	if r.carry == nil {
		r.carry = func(dst, src net.Conn, _ bool) { r.pipe(dst, src) }
	}
	r.cond = sync.NewCond(&r.mu)
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(r.Close)
	return r
}

// Addr is where clients connect.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Freeze stops all forwarding, for existing and new connections.
func (r *Relay) Freeze() { r.set(true) }

// Thaw resumes forwarding.
func (r *Relay) Thaw() { r.set(false) }

func (r *Relay) set(f bool) {
	r.mu.Lock()
	r.frozen = f
	r.mu.Unlock()
	r.cond.Broadcast()
}

// wait blocks while frozen; false means the relay is closing.
func (r *Relay) wait() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.frozen && !r.closed {
		r.cond.Wait()
	}
	return !r.closed
}

// Close ends the relay and every connection through it.
func (r *Relay) Close() {
	r.ln.Close()
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.cond.Broadcast()
	r.wg.Wait()
}

// Reset aborts every connection through the relay with a TCP reset, as a
// NAT gateway that reboots would, and keeps accepting new ones.
func (r *Relay) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
		delete(r.conns, c)
	}
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		c.Close()
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *Relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		if !r.track(c) {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if !r.wait() {
				return
			}
			up, err := r.dial(r.target)
			if err != nil {
				r.untrack(c)
				c.Close()
				return
			}
			if !r.track(up) {
				c.Close()
				return
			}
			var pair sync.WaitGroup
			pair.Add(2)
			go func() { defer pair.Done(); r.carry(up, c, true) }()
			go func() { defer pair.Done(); r.carry(c, up, false) }()
			pair.Wait()
			r.untrack(c)
			r.untrack(up)
			c.Close()
			up.Close()
		}()
	}
}

// pipe copies src to dst, holding each chunk while frozen.
func (r *Relay) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		if !r.wait() {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			if !r.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			// A frozen relay passes nothing, a FIN included: one side's
			// close must not tell the other that something happened.
			if !r.wait() {
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			return
		}
	}
}
