package mux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// ErrSessionLost is returned by Stream.Read and Stream.Write when the
// stream ended because its session died, not because the peer closed it.
var ErrSessionLost error = sessionLost{}

type sessionLost struct{}

func (sessionLost) Error() string { return "session lost" }

// errStreamReset is what a read of a stream the peer reset returns; it
// wraps ECONNRESET so it reads like the TCP reset it stands for.
var errStreamReset = fmt.Errorf("stream reset by peer: %w", syscall.ECONNRESET)

// Stream is one stream of a session, a net.Conn with TCP's semantics:
// CloseWrite half-closes, Close ends both directions here (data that
// arrives afterwards resets the stream, as a TCP reset answers data for a
// closed socket), Abort resets at once, and a deadline in the past fails
// Read and Write even when they would not wait. Read and Write report a
// dead session as ErrSessionLost rather than a clean end. It also offers
// the hooks package proxy parks an idle direction on (NotifyReadable,
// NotifyReadableOrDeliver).
type Stream struct {
	ys     *yamux.Stream
	mu     sync.Mutex // orders Close against the deadline setters
	closed atomic.Bool
	rd, wd atomic.Int64 // deadlines in Unix nanoseconds, 0 for none
}

func newStream(ys *yamux.Stream) *Stream { return &Stream{ys: ys} }

// ID is the stream's id in its session.
func (s *Stream) ID() uint32 { return s.ys.StreamID() }

// LocalAddr and RemoteAddr are the session socket's.
func (s *Stream) LocalAddr() net.Addr  { return s.ys.LocalAddr() }
func (s *Stream) RemoteAddr() net.Addr { return s.ys.RemoteAddr() }

// Read is yamux's Read, but an EOF caused by a dead session is an error.
func (s *Stream) Read(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	if expired(&s.rd) {
		return 0, errDeadline
	}
	n, err := s.ys.Read(p)
	switch {
	case err == nil:
	case s.closed.Load():
		err = net.ErrClosed
	case err == io.EOF && s.ys.Session().IsClosed():
		err = ErrSessionLost
	case err == io.EOF:
	default:
		err = streamError(err)
	}
	return n, err
}

// Write is yamux's Write with its errors classified as Read's are: every
// way a dead session can fail a write (the stream closed under it, the
// frame's own write hitting the closed socket, the send queue shut) is
// ErrSessionLost, with the socket's error kept underneath.
func (s *Stream) Write(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	if expired(&s.wd) {
		return 0, errDeadline
	}
	n, err := s.ys.Write(p)
	switch {
	case err == nil:
	case s.closed.Load():
		err = net.ErrClosed
	default:
		err = streamError(err)
	}
	return n, err
}

// expired reports whether the deadline in d has passed. yamux checks a
// deadline only when a call would wait; net.Conn's contract is that a past
// deadline fails every call.
func expired(d *atomic.Int64) bool {
	t := d.Load()
	return t != 0 && time.Now().UnixNano() >= t
}

// CloseWrite sends FIN on the stream; reads keep working.
func (s *Stream) CloseWrite() error { return s.ys.Close() }

// Close ends the stream in both directions here: pending and later calls
// fail with net.ErrClosed. Unread data makes it a reset, as TCP does, so
// the peer does not take what it sent for delivered. Otherwise the peer
// gets a FIN after everything written; if it has not finished sending
// yet, its next data is answered with a reset instead of filling a
// window nobody reads.
func (s *Stream) Close() error {
	s.mu.Lock()
	if s.closed.Swap(true) {
		s.mu.Unlock()
		return nil
	}
	// A past deadline wakes pending calls (they see closed and say so)
	// and keeps the probe below and afterClose from waiting.
	_ = s.ys.SetDeadline(time.Unix(1, 0))
	s.mu.Unlock()
	var b [1]byte
	n, err := s.ys.Read(b[:])
	switch {
	case n > 0:
		return s.ys.Reset()
	case err == io.EOF: // the peer is done too
		return s.ys.Close()
	case isTimeout(err): // nothing unread; the peer may still send
		cerr := s.ys.Close()
		s.ys.NotifyReadable(func() { go s.afterClose() })
		return cerr
	}
	return nil // reset, or the session is gone: nothing left to end
}

// afterClose runs once a closed stream whose peer was still sending
// becomes readable: the peer's FIN ends the stream; data, which nobody
// will read, is answered with a reset; a reset or the session's end
// leaves nothing to do.
func (s *Stream) afterClose() {
	var b [1]byte
	if n, _ := s.ys.Read(b[:]); n > 0 {
		_ = s.ys.Reset()
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Abort resets the stream: pending reads and writes here end at once, and
// the peer's fail with a reset rather than a clean end.
func (s *Stream) Abort() error { return s.ys.Reset() }

// SetDeadline, SetReadDeadline and SetWriteDeadline are net.Conn's.
func (s *Stream) SetDeadline(t time.Time) error {
	if err := s.SetReadDeadline(t); err != nil {
		return err
	}
	return s.SetWriteDeadline(t)
}

func (s *Stream) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return net.ErrClosed
	}
	s.rd.Store(unixNano(t))
	return s.ys.SetReadDeadline(t)
}

func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return net.ErrClosed
	}
	s.wd.Store(unixNano(t))
	return s.ys.SetWriteDeadline(t)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// NotifyReadable calls f once when the stream has data, has ended or
// failed (at once if it already has); f must not block. With Readable it
// lets package proxy park an idle direction without a goroutine.
func (s *Stream) NotifyReadable(f func()) { s.ys.NotifyReadable(f) }

// NotifyReadableOrDeliver is NotifyReadable, and until f is called the
// session hands arriving data straight to deliver, which must not block
// (see yamux's Stream.NotifyReadableOrDeliver).
func (s *Stream) NotifyReadableOrDeliver(f func(), deliver func([]byte) (int, error)) {
	s.ys.NotifyReadableOrDeliver(f, deliver)
}

// EnableAcks makes this end acknowledge the data its reader consumes, so
// that the peer's Acked tells which of the bytes it wrote have left the
// session here: what it must keep to resend them over another session.
// Only for a peer that said it understands acknowledgments (an older one
// ends the session on them). The session acknowledges with its window
// updates, and what those do not cover at its monitor's TCP_INFO samples.
func (s *Stream) EnableAcks() { s.ys.EnableAcks() }

// Sent is how many bytes were written on the stream; Acked how many of
// them the peer's reader has acknowledged consuming (never more than Sent).
func (s *Stream) Sent() uint64  { return s.ys.Sent() }
func (s *Stream) Acked() uint64 { return s.ys.Acked() }

// OnAck calls f with each new Acked total (nil stops it). f runs on the
// session's receive loop and must not block.
func (s *Stream) OnAck(f func(acked uint64)) { s.ys.OnAck(f) }

// Readable reports whether a Read would return without waiting.
func (s *Stream) Readable() bool { return s.ys.Readable() }

// WaitReadableFor waits up to d for data, an end or a failure; false means
// the stream stayed idle. It uses (and then restores) the read deadline.
func (s *Stream) WaitReadableFor(d time.Duration) bool {
	_ = s.ys.SetReadDeadline(time.Now().Add(d))
	_, err := s.ys.Read(nil)
	s.mu.Lock()
	if !s.closed.Load() {
		_ = s.ys.SetReadDeadline(deadline(s.rd.Load()))
	}
	s.mu.Unlock()
	return !isTimeout(err)
}

func deadline(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// streamError classifies an error of a stream call.
func streamError(err error) error {
	switch {
	case errors.Is(err, yamux.ErrSessionShutdown):
		if err == yamux.ErrSessionShutdown {
			return ErrSessionLost
		}
		return fmt.Errorf("%w: %w", ErrSessionLost, err)
	case errors.Is(err, yamux.ErrConnectionReset):
		return errStreamReset
	case errors.Is(err, yamux.ErrStreamClosed):
		return net.ErrClosed
	case errors.Is(err, yamux.ErrTimeout):
		return errDeadline
	}
	return err
}

// errDeadline is a stream call's deadline passing. Like package net's, it
// is a net.Error whose Timeout is true and it is os.ErrDeadlineExceeded.
var errDeadline error = deadlineError{}

type deadlineError struct{}

func (deadlineError) Error() string        { return "i/o timeout" }
func (deadlineError) Timeout() bool        { return true }
func (deadlineError) Temporary() bool      { return true }
func (deadlineError) Is(target error) bool { return target == os.ErrDeadlineExceeded }
