// Package resume carries one connection's bytes over a succession of
// session streams, so that the connection outlives the session that
// carried it: each end keeps what it wrote until the peer's reader has
// acknowledged it (mux.Stream.Acked), counts what it read, and on a new
// stream resends what the peer says it never got. A FIN counts as one
// more byte, as in TCP's sequence space, so a half-close made while the
// session was dying is resent too.
//
// It knows nothing of tunnels or of who may resume what: pairing the two
// ends on a new session, telling each the other's read offset (Detach,
// then Attach) and checking that the peer is who it claims to be are its
// caller's. It never touches the socket at the other side of its join.
package resume

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/tunnel-dev/tunnel/internal/mux"
)

// Stream is what a Conn runs over: a mux.Stream.
type Stream interface {
	io.ReadWriter
	CloseWrite() error
	Close() error
	Abort() error
	EnableAcks()
	Sent() uint64
	Acked() uint64
	OnAck(func(acked uint64))
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
	// Readiness, as package proxy parks an idle direction on.
	NotifyReadableOrDeliver(f func(), deliver func([]byte) (int, error))
	Readable() bool
	WaitReadableFor(d time.Duration) bool
}

var (
	// ErrExpired is what Read and Write return once the connection waited
	// detached for longer than its window.
	ErrExpired = errors.New("no session to resume on within the resume window")
	// ErrOffset is Attach's error for a peer whose read offset cannot be
	// true: behind what it acknowledged, or past what was written.
	ErrOffset = errors.New("peer's read offset is impossible")
	// ErrClosed is what Read and Write return after Close or Abort; it
	// is a net.ErrClosed.
	ErrClosed = fmt.Errorf("resumable connection: %w", net.ErrClosed)
)

// Conn is one end of a resumable connection: a net.Conn whose Read and
// Write wait, rather than fail, while it has no stream (up to their
// deadlines). Close is TCP's: the caller is done at once, while what it
// wrote is still delivered (see Close).
type Conn struct {
	window time.Duration

	// wmu orders writes on the stream: a Write, or Attach resending the
	// tail, holds it from deciding what to send to having sent it.
	wmu sync.Mutex

	mu   sync.Mutex
	st   Stream        // nil while detached
	wake chan struct{} // closed and replaced when a wait has news (wakeLocked)
	// Deadlines (zero for none), applied to each stream and to the waits
	// for one.
	rd, wd time.Time
	err    error         // why the connection ended, if it did
	done   chan struct{} // closed when it ended
	// expire ends a detached connection after window; linger a closed
	// one whose peer has not read everything by then.
	expire, linger *time.Timer

	// What was written: kept holds the bytes from keptFrom to written,
	// those not yet acknowledged. sendBase is where the current stream's
	// bytes start in the connection, and ackBase what the stream had sent
	// before it carried this connection (a header its owner wrote): its
	// Acked, less ackBase, counts from sendBase.
	kept     keptBuf
	keptFrom uint64
	// maxKept bounds kept (0: no bound): a peer that does not
	// acknowledge stalls the writer rather than growing kept.
	// spaceWait is set while a Write waits for acknowledgments.
	maxKept   int
	spaceWait bool
	written   uint64
	sendBase  uint64
	ackBase   uint64
	wclosed   bool // CloseWrite was called: a FIN follows written
	finAcked  bool // the peer has read that FIN, and so everything
	closing   bool // Close was called: end once finAcked
	laddr     net.Addr
	raddr     net.Addr

	read uint64 // bytes read, plus one once the peer's FIN was read
	rfin bool
	// reading is the stream a Read is in, if any; readDone is signalled
	// when it leaves it. Detach waits for a Read on the old stream to
	// end, so that what it read is in the offset Detach reports: its
	// bytes were consumed, and perhaps acknowledged, on that stream.
	reading  Stream
	readDone sync.Cond
	// A readiness hook set while detached, installed on the next stream
	// (or called when the connection ends).
	hook        func()
	hookDeliver func([]byte) (int, error)
}

// New returns a Conn running over st, whose reader acknowledges (the caller
// has agreed this with the peer), that waits up to window for a new stream
// after st's session dies.
func New(st Stream, window time.Duration) *Conn {
	c := newConn(window)
	c.attachLocked(st, 0)
	return c
}

func newConn(window time.Duration) *Conn {
	c := &Conn{window: window, wake: make(chan struct{}), done: make(chan struct{})}
	c.readDone.L = &c.mu
	return c
}

// Detached returns a Conn that has no stream yet, for a connection taken
// while its peer is away: it starts on its first Attach (with peerRead 0)
// and ends after window without one.
func Detached(window time.Duration) *Conn {
	c := newConn(window)
	c.mu.Lock()
	defer c.mu.Unlock()
	if window > 0 {
		c.expire = time.AfterFunc(window, c.expired)
	} else {
		c.endLocked(ErrExpired)
	}
	return c
}

// LimitKept bounds what the connection keeps unacknowledged to about n
// bytes (one Write more at most): past it, Write waits for the peer's
// acknowledgments, as a TCP sender waits for window. A peer's reader
// acknowledges within its stream window, so n at or above the largest
// window the peer may grant only stops a peer that never acknowledges;
// a smaller n caps throughput at n per round trip. Call it before the
// first Write.
func (c *Conn) LimitKept(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxKept = n
}

// Offset is how much of the peer's data this end has read, its FIN counted
// as a byte: what the peer must resend from.
func (c *Conn) Offset() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read
}

// Detach gives up the current stream (its session died, or is about to be
// replaced) and returns the read offset to tell the peer. Data the old
// stream still holds is dropped: the peer resends it from that offset.
// The connection then waits up to its window for Attach.
func (c *Conn) Detach() uint64 {
	c.mu.Lock()
	old := c.st
	c.detachLocked(old)
	stale := c.reading
	c.mu.Unlock()
	// A write or read blocked on the old stream (its session alive but
	// being replaced) must give way; written bytes are kept.
	if old != nil {
		_ = old.Abort()
	}
	if stale != nil && stale != old {
		_ = stale.Abort()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.reading != nil && c.reading != c.st {
		c.readDone.Wait()
	}
	return c.read
}

// detachLocked drops st if it is still the current stream.
func (c *Conn) detachLocked(st Stream) {
	if c.st == nil || c.st != st || c.err != nil {
		return
	}
	c.st.OnAck(nil)
	c.st = nil
	if c.window > 0 {
		c.expire = time.AfterFunc(c.window, c.expired)
	} else {
		c.endLocked(ErrExpired)
	}
}

func (c *Conn) expired() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st == nil {
		c.endLocked(ErrExpired)
	}
}

// endLocked ends the connection with err: every wait returns it, and what
// was kept is freed.
func (c *Conn) endLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	c.kept.reset()
	if c.expire != nil {
		c.expire.Stop()
	}
	if c.linger != nil {
		c.linger.Stop()
	}
	if c.st != nil {
		c.st.OnAck(nil)
	}
	close(c.wake)
	close(c.done)
	if f := c.hook; f != nil {
		c.hook, c.hookDeliver = nil, nil
		f() // it must not block, nor call back into c
	}
}

// Done is closed when the connection has ended: closed once the peer read
// everything, aborted, expired, or reset by the peer (Err says which).
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the connection ended, nil while it has not.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Attach carries the connection on st from now on. peerRead is the
// peer's read offset (its Detach, or Offset): what the peer is missing of
// what was written, and the FIN if CloseWrite was called, is resent
// first. An impossible offset (ErrOffset) ends nothing: the connection
// keeps waiting for the real peer.
func (c *Conn) Attach(st Stream, peerRead uint64) error {
	// If the caller did not Detach: the stream in use goes first, and
	// before wmu, which a write blocked on that stream holds until its
	// abort releases it.
	c.Detach()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	end := c.written
	if c.wclosed {
		end++
	}
	if peerRead < c.keptFrom || peerRead > end {
		c.mu.Unlock()
		return fmt.Errorf("%w: %d, with %d to %d kept", ErrOffset, peerRead, c.keptFrom, end)
	}
	if c.expire != nil {
		c.expire.Stop()
	}
	// Acknowledged by the peer's offset: what it read is never needed again.
	c.dropLocked(peerRead)
	if c.wclosed && peerRead == end {
		c.finAcked = true
		if c.closing {
			c.endLocked(ErrClosed)
			c.mu.Unlock()
			return st.Close()
		}
	}
	tail := c.kept.lend()
	wclosed := c.wclosed
	hook, deliver := c.attachLocked(st, peerRead)
	c.mu.Unlock()
	if hook != nil {
		st.NotifyReadableOrDeliver(hook, c.deliverer(st, deliver))
	}
	for _, b := range tail {
		if _, err := st.Write(b); err != nil {
			c.unlend()
			return c.failed(st, err)
		}
	}
	c.unlend()
	// The FIN again, whether or not the peer read it: a stream that
	// carries no more data ends like any other.
	if wclosed {
		if err := st.CloseWrite(); err != nil {
			return c.failed(st, err)
		}
	}
	return nil
}

func (c *Conn) attachLocked(st Stream, base uint64) (hook func(), deliver func([]byte) (int, error)) {
	c.st = st
	c.sendBase = base
	c.ackBase = st.Sent()
	c.laddr, c.raddr = st.LocalAddr(), st.RemoteAddr()
	if !c.closing {
		_ = st.SetReadDeadline(c.rd)
		_ = st.SetWriteDeadline(c.wd)
	}
	st.EnableAcks()
	st.OnAck(func(acked uint64) { c.acked(st, acked) })
	c.wakeLocked()
	hook, deliver = c.hook, c.hookDeliver
	c.hook, c.hookDeliver = nil, nil
	return hook, deliver
}

// wakeLocked tells every wait for a stream, or for the connection's
// end, to look again.
func (c *Conn) wakeLocked() {
	close(c.wake)
	c.wake = make(chan struct{})
}

// acked frees what the peer's reader acknowledged on st, if st is still
// the current stream. It runs on the session's receive loop.
func (c *Conn) acked(st Stream, acked uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st != c.st || c.err != nil || acked <= c.ackBase {
		return
	}
	off := c.sendBase + acked - c.ackBase
	c.dropLocked(off)
	if c.spaceWait {
		c.spaceWait = false
		c.wakeLocked()
	}
	if c.wclosed && off > c.written {
		c.finAcked = true
		if c.closing {
			// Everything delivered: the stream has nothing more to carry
			// (its FINs are exchanged or ours is all that was left).
			c.endLocked(ErrClosed)
		}
	}
}

// dropLocked forgets the kept bytes before off.
func (c *Conn) dropLocked(off uint64) {
	if off > c.written {
		off = c.written
	}
	if off <= c.keptFrom {
		return
	}
	c.kept.drop(int(off - c.keptFrom))
	c.keptFrom = off
}

// failed handles an error from st: a lost session detaches (the
// connection waits for the next stream), anything else (the peer reset
// the stream) ends the connection; nil means carry on.
func (c *Conn) failed(st Stream, err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return err // the caller's deadline: the connection goes on
	}
	if st != c.st {
		return nil // a stream given up already: its errors are no news
	}
	if errors.Is(err, mux.ErrSessionLost) {
		c.detachLocked(st)
		return nil
	}
	c.endLocked(err)
	return err
}

// current waits for a stream, up to the write deadline, and returns it.
func (c *Conn) current() (Stream, error) {
	for {
		c.mu.Lock()
		switch {
		case c.closing:
			c.mu.Unlock()
			return nil, ErrClosed
		case c.err != nil:
			err := c.err
			c.mu.Unlock()
			return nil, err
		case c.st != nil:
			st := c.st
			c.mu.Unlock()
			return st, nil
		}
		wake, dl := c.wake, c.wd
		c.mu.Unlock()
		if err := wait(wake, dl); err != nil {
			return nil, err
		}
	}
}

// wait waits for wake until the deadline d (zero: none).
func wait(wake <-chan struct{}, d time.Time) error {
	if d.IsZero() {
		<-wake
		return nil
	}
	left := time.Until(d)
	if left <= 0 {
		return os.ErrDeadlineExceeded
	}
	t := time.NewTimer(left)
	defer t.Stop()
	select {
	case <-wake:
		return nil
	case <-t.C:
		return os.ErrDeadlineExceeded
	}
}

// Write keeps p until the peer acknowledges it and writes it on the
// current stream, waiting for one while detached. It fails only once the
// connection ended.
func (c *Conn) Write(p []byte) (int, error) {
	return c.write(p, func() { c.kept.write(p) })
}

// WriteKeep is Write for a writer that hands over its buffer instead of
// having it copied: the first n bytes of *b are the data, and the
// connection owns b from the call on, giving it to give once the peer
// has acknowledged them (or at once, when nothing was kept).
func (c *Conn) WriteKeep(b *[]byte, n int, give func(*[]byte)) (int, error) {
	kept := false
	w, err := c.write((*b)[:n], func() { c.kept.adopt(b, n, give); kept = true })
	if !kept {
		give(b)
	}
	return w, err
}

// write is Write and WriteKeep; keep records p as kept, under mu.
func (c *Conn) write(p []byte, keep func()) (int, error) {
	for {
		st, err := c.current()
		if err != nil {
			return 0, err
		}
		c.wmu.Lock()
		c.mu.Lock()
		if c.st != st || c.err != nil || c.wclosed || c.closing {
			end := c.wclosed || c.closing
			c.mu.Unlock()
			c.wmu.Unlock()
			if end {
				return 0, ErrClosed
			}
			continue
		}
		if c.maxKept > 0 && c.kept.n > 0 && c.kept.n+len(p) > c.maxKept {
			// Wait for the peer to acknowledge some (acked wakes us).
			c.spaceWait = true
			wake, dl := c.wake, c.wd
			c.mu.Unlock()
			c.wmu.Unlock()
			if err := wait(wake, dl); err != nil {
				return 0, err
			}
			continue
		}
		keep()
		c.written += uint64(len(p))
		c.mu.Unlock()
		n, err := st.Write(p)
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			// What did not go stays unwritten: it cannot have been
			// acknowledged, and the caller may give it up.
			c.mu.Lock()
			unsent := len(p) - n
			c.written -= uint64(unsent)
			c.kept.unwrite(unsent)
			c.mu.Unlock()
			c.wmu.Unlock()
			return n, err
		}
		c.wmu.Unlock()
		if err != nil {
			if err = c.failed(st, err); err != nil {
				return n, err
			}
		}
		// Kept: sent now, or resent on the next stream.
		return len(p), nil
	}
}

// CloseWrite sends a FIN after what was written, now or on the next
// stream.
func (c *Conn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.err != nil || c.wclosed {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.wclosed = true
	st := c.st
	c.mu.Unlock()
	if st == nil {
		return nil
	}
	if err := st.CloseWrite(); err != nil {
		return c.failed(st, err)
	}
	return nil
}

// Read reads from the current stream, waiting for one while detached.
func (c *Conn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if c.closing {
			c.mu.Unlock()
			return 0, ErrClosed
		}
		if c.rfin && c.err == nil {
			c.mu.Unlock()
			return 0, io.EOF
		}
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			return 0, err
		}
		st := c.st
		if st == nil {
			wake, dl := c.wake, c.rd
			c.mu.Unlock()
			if err := wait(wake, dl); err != nil {
				return 0, err
			}
			continue
		}
		c.reading = st
		c.mu.Unlock()
		n, err := st.Read(p)
		c.mu.Lock()
		c.reading = nil
		c.readDone.Broadcast()
		c.read += uint64(n)
		if err == io.EOF {
			c.rfin = true
			c.read++
		}
		c.mu.Unlock()
		switch {
		case n > 0:
			return n, nil
		case err == io.EOF:
			return 0, io.EOF
		case err != nil:
			if err = c.failed(st, err); err != nil {
				if c.isClosing() {
					return 0, ErrClosed
				}
				return 0, err
			}
		}
	}
}

func (c *Conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// Close ends the connection once the peer has read everything written,
// like a TCP close with its send buffer still draining: it half-closes
// if that was not done, and the connection stays resumable until the
// peer acknowledges reading the FIN (Done is closed then). A peer that
// has not read everything within the window (attached or not) gets a
// reset. What the peer sends meanwhile is not read: close after reading
// the peer's EOF, as a join does.
func (c *Conn) Close() error {
	// The caller is done: its pending and later calls fail at once, and
	// a write it was blocked in gives way (what it did not send is not
	// sent) before the FIN follows what was.
	c.mu.Lock()
	if c.err != nil || c.closing {
		c.mu.Unlock()
		return nil
	}
	c.closing = true
	st := c.st
	c.wakeLocked()
	c.mu.Unlock()
	past := time.Unix(1, 0)
	if st != nil {
		_ = st.SetReadDeadline(past)
		_ = st.SetWriteDeadline(past)
	}
	c.wmu.Lock()
	c.mu.Lock()
	if st = c.st; st != nil {
		_ = st.SetWriteDeadline(time.Time{})
	}
	c.mu.Unlock()
	c.wmu.Unlock()
	if err := c.CloseWrite(); err != nil {
		return err
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil
	}
	if !c.finAcked {
		// A peer that never reads does not hold the connection forever.
		if c.window > 0 {
			c.linger = time.AfterFunc(c.window, c.lingered)
		}
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	return c.end(ErrClosed, Stream.Close)
}

// Abort ends the connection with a reset of the current stream.
func (c *Conn) Abort() error { return c.end(ErrClosed, Stream.Abort) }

func (c *Conn) end(err error, f func(Stream) error) error {
	c.mu.Lock()
	st := c.st
	c.endLocked(err)
	c.mu.Unlock()
	if st != nil {
		return f(st)
	}
	return nil
}

func (c *Conn) lingered() {
	c.mu.Lock()
	st := c.st
	c.endLocked(ErrExpired)
	c.mu.Unlock()
	if st != nil {
		_ = st.Abort()
	}
}

// Readable reports whether a Read would return without waiting for a
// stream or for data.
func (c *Conn) Readable() bool {
	c.mu.Lock()
	if c.err != nil || c.rfin {
		c.mu.Unlock()
		return true
	}
	st := c.st
	c.mu.Unlock()
	return st != nil && st.Readable()
}

// WaitReadableFor waits up to d until Readable; false means it is not.
func (c *Conn) WaitReadableFor(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		c.mu.Lock()
		if c.err != nil || c.rfin {
			c.mu.Unlock()
			return true
		}
		st, wake := c.st, c.wake
		c.mu.Unlock()
		if st != nil {
			return st.WaitReadableFor(time.Until(deadline))
		}
		if wait(wake, deadline) != nil {
			return false
		}
	}
}

// NotifyReadable calls f once when Readable (at once if it is); f must not
// block, nor call back into c.
func (c *Conn) NotifyReadable(f func()) { c.NotifyReadableOrDeliver(f, nil) }

// NotifyReadableOrDeliver is NotifyReadable, and until f is called data
// arriving with nothing buffered goes to deliver, as the stream's own
// (mux.Stream.NotifyReadableOrDeliver), counted in the read offset. While
// detached the hook waits for the next stream; an end calls f.
func (c *Conn) NotifyReadableOrDeliver(f func(), deliver func([]byte) (int, error)) {
	c.mu.Lock()
	if c.err != nil || c.rfin {
		c.mu.Unlock()
		f()
		return
	}
	st := c.st
	if st == nil {
		c.hook, c.hookDeliver = f, deliver
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	st.NotifyReadableOrDeliver(f, c.deliverer(st, deliver))
}

// deliverer wraps a deliver function for st: what it takes counts as read,
// under the lock Detach reads the offset under; a stream no longer
// current delivers nothing (its data stays there, abandoned, and the peer
// resends it on the next).
func (c *Conn) deliverer(st Stream, deliver func([]byte) (int, error)) func([]byte) (int, error) {
	if deliver == nil {
		return nil
	}
	return func(p []byte) (int, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.st != st || c.err != nil {
			return 0, nil
		}
		n, err := deliver(p)
		c.read += uint64(n)
		return n, err
	}
}

// LocalAddr and RemoteAddr are the current (or last) stream's.
func (c *Conn) LocalAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.laddr
}

func (c *Conn) RemoteAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.raddr
}

// SetDeadline, SetReadDeadline and SetWriteDeadline are net.Conn's: they
// bound the wait for a stream as well as the stream's own.
func (c *Conn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.setDeadline(&c.rd, t, Stream.SetReadDeadline)
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.setDeadline(&c.wd, t, Stream.SetWriteDeadline)
}

func (c *Conn) setDeadline(d *time.Time, t time.Time, set func(Stream, time.Time) error) error {
	c.mu.Lock()
	if c.closing || c.err != nil {
		c.mu.Unlock()
		return nil
	}
	*d = t
	st := c.st
	c.wakeLocked() // waits for a stream look at the new deadline
	c.mu.Unlock()
	if st != nil {
		return set(st, t)
	}
	return nil
}

// Kept is how many written bytes are kept for the peer, not yet
// acknowledged.
func (c *Conn) Kept() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.kept.n
}

// unlend ends a resend from the kept chunks.
func (c *Conn) unlend() {
	c.mu.Lock()
	c.kept.lent = false
	c.mu.Unlock()
}
