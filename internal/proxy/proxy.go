// Package proxy joins two connections and dials local services.
//
// Join copies both directions independently with correct half-close: EOF on
// one direction becomes CloseWrite on the other side's writer, and the pair
// is closed only when both directions are done — or at once, with a reset,
// when either side fails. It must not know about sessions or tunnels: a
// stream that can tell a dead session from a clean EOF does so through its
// own Read error.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/internal/rawio"

	"github.com/tunnel-dev/tunnel/internal/sockopt"
)

// BufSize is the copy buffer of one direction.
const BufSize = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, BufSize); return &b }}

// Stats counts what Join moved.
type Stats struct {
	AToB, BToA int64
}

// Aborter is a conn that can be cut short so its peer sees an error rather
// than a clean end (a reset for TCP).
type Aborter interface{ Abort() error }

type closeWriter interface{ CloseWrite() error }

// Join copies between a and b until both directions have ended, then
// closes both. Join owns a and b: they are closed when it returns. The
// names label errors ("public -> stream: read: ...").
//
// A clean EOF from one side half-closes the other. Any other error aborts
// both sides (RST for TCP) so that nobody takes a truncated stream for a
// complete one, and Join returns the first error.
func Join(ctx context.Context, a net.Conn, aName string, b net.Conn, bName string) (Stats, error) {
	type result struct {
		st  Stats
		err error
	}
	ch := make(chan result, 1)
	Go(ctx, a, aName, b, bName, func(st Stats, err error) { ch <- result{st, err} })
	r := <-ch
	return r.st, r.err
}

// Go is Join in the background: it returns at once and calls done once,
// when both directions have ended and a and b are closed. A direction whose
// source can notify (a stream) parks while idle instead of holding a
// goroutine; the other runs on a fresh goroutine, so the caller's (often
// grown by handshake work) can end. An idle connection then costs one small
// goroutine per daemon.
//
// When ctx ends first, the join is aborted at once, in whatever state it is
// (both directions open, one half-closed and the other waiting on a silent
// peer, parked, delivering): both sides are reset and done gets an error
// wrapping context.Cause(ctx). The owner of a session passes a context that
// ends with the session, so that no connection outlives what carries it.
//
// The returned Pair reads the counts while the join runs and can abort it
// (an operator closing one connection).
func Go(ctx context.Context, a net.Conn, aName string, b net.Conn, bName string, done func(Stats, error)) *Pair {
	j := &joiner{a: a, b: b}
	ab := &half{j: j, dst: b, src: a, name: aName + " -> " + bName}
	ba := &half{j: j, dst: a, src: b, name: bName + " -> " + aName}
	// No goroutine waits on ctx: the callback runs only if it ends.
	stop := context.AfterFunc(ctx, func() {
		j.fail(fmt.Errorf("%s <-> %s: %w", aName, bName, context.Cause(ctx)))
	})
	var left atomic.Int32
	left.Store(2)
	finish := func() {
		if left.Add(-1) != 0 {
			return
		}
		stop()
		done(Stats{AToB: ab.n.Load(), BToA: ba.n.Load()}, j.close())
	}
	ab.finish, ba.finish = finish, finish
	ab.start()
	ba.start()
	return &Pair{j: j, ab: ab, ba: ba}
}

// Pair is a running join, seen from outside.
type Pair struct {
	j      *joiner
	ab, ba *half
}

// Moved is what the join has moved so far: each direction's count grows
// as its writes complete, not only when it ends.
func (p *Pair) Moved() Stats { return Stats{AToB: p.ab.n.Load(), BToA: p.ba.n.Load()} }

// Abort resets both sides, as a failure would; done gets err. Once the
// join is over it does nothing.
func (p *Pair) Abort(err error) { p.j.fail(err) }

// ReadNotifier is a conn that can call back when it becomes readable, so a
// copy can wait for it without a goroutine.
type ReadNotifier interface {
	// NotifyReadable calls f once when a Read would not wait (at once if
	// so already); f must not block.
	NotifyReadable(f func())
	// Readable reports whether a Read would not wait.
	Readable() bool
	// WaitReadableFor waits up to d until a Read would not wait; false
	// means it would still wait.
	WaitReadableFor(d time.Duration) bool
}

// Deliverer is a ReadNotifier that, while parked, can hand arriving data
// straight to a writer that never blocks, calling f only when that writer
// could not take it all or the source ended.
type Deliverer interface {
	NotifyReadableOrDeliver(f func(), deliver func([]byte) (int, error))
}

// WriteSocketer is a conn whose reads must go through its Read (it
// parses or replays what it reads) but whose writes may go straight to
// the socket under it: the copy writes there, and a parked stream
// delivers there, as to a socket of its own.
type WriteSocketer interface {
	WriteSocket() net.Conn
}

// Keeper is a writer that can keep the copy buffer it is handed instead
// of copying from it (a resumable connection keeps what it wrote until
// the peer acknowledges it). WriteKeep owns b from the call on, and gives
// it to give when done with it; the first n bytes are the data.
type Keeper interface {
	WriteKeep(b *[]byte, n int, give func(*[]byte)) (int, error)
}

// keepMin is the least a read must have filled of its buffer for the
// buffer to be handed to a Keeper: a Keeper holds it whole until the
// data is acknowledged, so a smaller read is copied instead.
const keepMin = BufSize / 2

func putBuf(b *[]byte) { bufPool.Put(b) }

// Linger is how long a drained direction that cannot be delivered to (its
// source is no Deliverer, or dst no socket) waits on its goroutine for more
// data before it parks. Busy connections (request, response, request...)
// keep their goroutine; a connection idle for longer costs none. Parking
// after every drain instead cost a goroutine start per message, a large
// loss of request rate (docs/performance.md).
const Linger = time.Second

type joiner struct {
	a, b  net.Conn
	mu    sync.Mutex
	first error
	over  bool // both directions ended and the pair is closed
}

// fail records the first error and aborts both sides, which unblocks the
// other direction and tells both peers. Once the join is over, a late
// failure (its context ending just then) changes nothing.
func (j *joiner) fail(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.first != nil || j.over {
		return
	}
	j.first = err
	abort(j.a)
	abort(j.b)
}

// close ends the join once both directions have ended: a clean end closes
// the pair (a failure has aborted it already). It returns the failure.
func (j *joiner) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.over = true
	if j.first == nil {
		j.a.Close()
		j.b.Close()
	}
	return j.first
}

// half is one direction of a join.
type half struct {
	j        *joiner
	dst, src net.Conn
	name     string
	n        atomic.Int64
	finish   func()
	// deliver, when the source is a Deliverer and dst a socket, writes
	// what arrives for a parked direction without waking it (tryWrite).
	deliver func([]byte) (int, error)
	// write writes all of a buffer to dst: through package rawio when dst
	// is a socket (the package says why), else dst.Write.
	write func([]byte) (int, error)
	sock  *rawio.Socket // dst's socket, nil when dst is no socket
}

// start runs the direction in the background on a goroutine of its own;
// a direction whose source can notify gives it up once drained (see
// resume).
func (h *half) start() {
	h.write = h.dst.Write
	sock := h.dst
	if w, ok := h.dst.(WriteSocketer); ok {
		sock = w.WriteSocket()
	}
	if s, ok := rawio.New(sock); ok {
		h.sock, h.write = s, s.Write
	}
	if _, ok := h.src.(ReadNotifier); ok {
		if _, ok := h.src.(Deliverer); ok && h.sock != nil {
			h.deliver = h.tryWrite
		}
		go h.resume()
		return
	}
	go h.run()
}

func (h *half) wake() { go h.resume() }

// tryWrite is the deliver function: it writes to dst's socket what fits at
// once and never waits; what does not fit goes to the reader. Deliveries
// come one at a time, from the session's receive loop while the direction
// is parked, so they never overlap h.write.
func (h *half) tryWrite(p []byte) (int, error) {
	n, err := h.sock.TryWrite(p)
	h.n.Add(int64(n))
	return n, err
}

// resume copies while the source has data, then parks: the goroutine
// ends and a new one starts when the source becomes readable. A source
// that delivers parks at once, since data then reaches dst without a
// wakeup; any other waits up to Linger for more first.
func (h *half) resume() {
	rn := h.src.(ReadNotifier)
	for {
		if !rn.Readable() {
			if h.deliver != nil {
				h.src.(Deliverer).NotifyReadableOrDeliver(h.wake, h.deliver)
				return
			}
			if !rn.WaitReadableFor(Linger) {
				rn.NotifyReadable(h.wake)
				return
			}
		}
		if done, err := h.copyOnce(); done {
			h.end(err)
			return
		}
	}
}

// run copies until the source ends, blocking while it is idle.
func (h *half) run() {
	h.end(copyHalf(h.dst, h.src, h.write, &h.n))
}

func (h *half) end(err error) {
	if err != nil {
		h.j.fail(fmt.Errorf("%s: %w", h.name, err))
	}
	h.finish()
}

// copyOnce does one read and its write, as forward.
func (h *half) copyOnce() (done bool, err error) {
	bp := bufPool.Get().(*[]byte)
	nr, rerr := h.src.Read(*bp)
	return forward(h.dst, h.write, bp, nr, rerr, &h.n)
}

// copyHalf copies src to dst until src ends, adding what it wrote to *n
// as it goes (a status read mid-transfer sees it). EOF half-closes dst.
//
// A buffer is held only while data flows: a socket is read from inside the
// poller's callback with a pooled buffer taken for that one read, so a
// connection waiting for data holds none (streams park instead, see
// half.resume). Busy connections copy in BufSize chunks: large chunks
// move more bytes per CPU second than small ones (docs/performance.md).
func copyHalf(dst, src net.Conn, write func([]byte) (int, error), n *atomic.Int64) error {
	read := reader(src)
	for {
		bp, nr, rerr := read()
		if done, err := forward(dst, write, bp, nr, rerr, n); done {
			return err
		}
	}
}

// forward writes what one read returned to dst, adding to n, and puts the
// buffer back. done is true when the copy is over: at EOF (dst is then
// half-closed, err nil) or on an error.
func forward(dst net.Conn, write func([]byte) (int, error), bp *[]byte, nr int, rerr error, n *atomic.Int64) (done bool, err error) {
	k, keep := dst.(Keeper)
	keep = keep && nr >= keepMin
	if bp != nil && !keep {
		defer bufPool.Put(bp)
	}
	if keep {
		nw, werr := k.WriteKeep(bp, nr, putBuf)
		n.Add(int64(nw))
		if werr != nil {
			return true, fmt.Errorf("write: %w", werr)
		}
	} else if nr > 0 {
		nw, werr := write((*bp)[:nr])
		n.Add(int64(nw))
		if werr != nil {
			return true, fmt.Errorf("write: %w", werr)
		}
	}
	switch {
	case rerr == io.EOF:
		return true, closeWrite(dst)
	case rerr != nil:
		return true, fmt.Errorf("read: %w", rerr)
	}
	return false, nil
}

// reader returns a function that waits for src's next data and reads it
// into a pooled buffer, which the caller puts back. A socket is read with
// the buffer taken only once data is there (rawio.Socket.ReadPooled).
func reader(src net.Conn) func() (*[]byte, int, error) {
	if s, ok := rawio.New(src); ok {
		return func() (*[]byte, int, error) { return s.ReadPooled(&bufPool) }
	}
	return func() (*[]byte, int, error) {
		bp := bufPool.Get().(*[]byte)
		n, err := src.Read(*bp)
		return bp, n, err
	}
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(closeWriter); ok {
		if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("close write: %w", err)
		}
		return nil
	}
	return c.Close()
}

func abort(c net.Conn) {
	if a, ok := c.(Aborter); ok {
		_ = a.Abort()
		return
	}
	_ = sockopt.Abort(c)
}

// DialLocal connects to a local service with the local leg's keepalive.
// The caller owns the conn.
func DialLocal(ctx context.Context, addr string, ka sockopt.KeepAlive, timeout time.Duration) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: timeout, KeepAliveConfig: ka.Config()}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}
