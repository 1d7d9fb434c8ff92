package yamux

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

type streamState int

const (
	streamInit streamState = iota
	streamSYNSent
	streamSYNReceived
	streamEstablished
	streamLocalClose
	streamRemoteClose
	streamClosed
	streamReset
)

// Stream is used to represent a logical stream
// within a session.
type Stream struct {
	recvWindow uint32
	sendWindow uint32

	// Local patch, for diagnosis: totals under recvLock of the window
	// granted by updates, of data received, and how the last frames went,
	// named in the "receive window exceeded" error so that one occurrence
	// tells a receiver-side accounting slip from a sender that overran.
	granted, received uint64
	sunk, buffered    uint64 // frames delivered to a sink, frames buffered
	overrun           bool   // the peer overran the window: drop its frames (see readData)

	// delivering (local patch, under recvLock) is the part of a frame that
	// left the window on arrival but is neither buffered nor taken by the
	// sink yet (see deliver). It is not consumed: a window update must not
	// reopen it, or a sink that then takes none of it buffers it on top of
	// a window already reopened in full.
	delivering uint32

	id      uint32
	session *Session

	state     streamState
	stateLock sync.Mutex

	recvBuf  recvBuffer // local patch: see recvbuf.go
	recvLock sync.Mutex
	// recvQuiet (local patch, under recvLock): the buffer was empty when
	// Session.ShrinkIdle last looked and nothing was buffered since.
	recvQuiet bool

	controlHdr     header
	controlErr     chan error
	controlHdrLock sync.Mutex

	sendHdr  header
	sendErr  chan error
	sendLock sync.Mutex

	recvNotifyCh chan struct{}
	sendNotifyCh chan struct{}

	readDeadline  atomic.Value // time.Time
	writeDeadline atomic.Value // time.Time

	// establishCh is notified if the stream is established or being closed.
	establishCh chan struct{}

	// closeTimer is set with stateLock held to honor the StreamCloseTimeout
	// setting on Session.
	closeTimer *time.Timer

	// readHook (local patch) is called once when the stream becomes
	// readable; see NotifyReadable.
	hookLock sync.Mutex
	readHook func()
	// hookSeq counts installed hooks, so NotifyReadable's own check fires
	// only the hook it installed, never a later one.
	hookSeq uint64

	// sink (local patch), guarded by hookLock like readHook, takes arriving
	// data while the stream is parked with nothing buffered; see
	// NotifyReadableOrDeliver. Lock order: stateLock, recvLock, hookLock;
	// hookLock is a leaf, so fireReadHook, which runs under stateLock
	// (processFlags), takes nothing else (see PATCHES.md).
	sink func([]byte) (int, error)
	// windowUpdating is set while a window update for sunk data is on
	// its way, so bulk data does not start one goroutine per frame.
	windowUpdating atomic.Bool

	// Acknowledgments (local patch, see EnableAcks). consumed is the data
	// the reader has taken (read, or written by a sink), under recvLock;
	// ackedSent what this end last acknowledged, under controlHdrLock.
	consumed  uint64
	ackedSent uint64
	acks      atomic.Bool
	// finRecv (under stateLock) is set when the peer's FIN arrives;
	// finRead (under recvLock) once the reader has read it, as EOF: it
	// then counts as one more byte consumed, so that the peer learns its
	// FIN was read.
	finRecv bool
	finRead bool
	// sent is the data written on the stream, acked what the peer's
	// reader has acknowledged of it (set by the receive loop only), and
	// ackHook is called with each new acked total.
	sent    atomic.Uint64
	acked   atomic.Uint64
	ackHook atomic.Pointer[func(uint64)]
}

// newStream is used to construct a new stream within
// a given session for an ID
func newStream(session *Session, id uint32, state streamState) *Stream {
	s := &Stream{
		id:           id,
		session:      session,
		state:        state,
		controlHdr:   newControlHdr(),
		controlErr:   make(chan error, 1),
		sendHdr:      header(make([]byte, headerSize)),
		sendErr:      make(chan error, 1),
		recvWindow:   initialStreamWindow,
		sendWindow:   initialStreamWindow,
		recvNotifyCh: make(chan struct{}, 1),
		sendNotifyCh: make(chan struct{}, 1),
		establishCh:  make(chan struct{}, 1),
	}
	s.readDeadline.Store(time.Time{})
	s.writeDeadline.Store(time.Time{})
	return s
}

// Session returns the associated stream session
func (s *Stream) Session() *Session {
	return s.session
}

// StreamID returns the ID of this stream
func (s *Stream) StreamID() uint32 {
	return s.id
}

// Read is used to read from the stream
func (s *Stream) Read(b []byte) (n int, err error) {
	defer asyncNotify(s.recvNotifyCh)
START:

	// If the stream is closed and there's no data buffered, return EOF
	s.stateLock.Lock()
	switch s.state {
	case streamLocalClose:
		// LocalClose only prohibits further local writes. Handle reads normally.
	case streamRemoteClose:
		fallthrough
	case streamClosed:
		s.recvLock.Lock()
		if s.recvBuf.Len() == 0 {
			// local patch: the peer's FIN, read, is acknowledged at once
			// (see EnableAcks); a stream closed by its session's end
			// read no FIN.
			final := s.finRecv && !s.finRead
			if final {
				s.finRead = true
				s.consumed++
			}
			s.recvLock.Unlock()
			s.stateLock.Unlock()
			if final && s.acks.Load() {
				s.finalAck()
			}
			return 0, io.EOF
		}
		s.recvLock.Unlock()
	case streamReset:
		s.stateLock.Unlock()
		return 0, ErrConnectionReset
	}
	s.stateLock.Unlock()

	// If there is no data available, block
	s.recvLock.Lock()
	if s.recvBuf.Len() == 0 {
		s.recvLock.Unlock()
		goto WAIT
	}

	// Read any bytes
	n = s.recvBuf.Read(b)
	s.consumed += uint64(n)
	s.recvLock.Unlock()

	// Send a window update potentially
	err = s.sendWindowUpdate()
	if errors.Is(err, ErrSessionShutdown) {
		err = nil
	}
	return n, err

WAIT:
	// local patch: a shut-down session can deliver nothing more. Without
	// this check the loop below spins (shutdownCh is closed, the state is
	// still established until forceClose runs), and many such readers
	// starve Session.Close. See hashicorp/yamux PR 176.
	select {
	case <-s.session.shutdownCh:
		return 0, ErrSessionShutdown
	default:
	}
	var timeout <-chan time.Time
	var timer *time.Timer
	readDeadline := s.readDeadline.Load().(time.Time)
	if !readDeadline.IsZero() {
		delay := time.Until(readDeadline)
		timer = time.NewTimer(delay)
		timeout = timer.C
	}
	select {
	case <-s.session.shutdownCh:
		if timer != nil {
			timer.Stop()
		}
		return 0, ErrSessionShutdown
	case <-s.recvNotifyCh:
	case <-timeout:
		return 0, ErrTimeout
	}
	if timer != nil {
		if !timer.Stop() {
			<-timeout
		}
	}
	goto START
}

// Write is used to write to the stream
func (s *Stream) Write(b []byte) (n int, err error) {
	s.sendLock.Lock()
	defer s.sendLock.Unlock()
	total := 0
	for total < len(b) {
		n, err := s.write(b[total:])
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// write is used to write to the stream, may return on
// a short write.
func (s *Stream) write(b []byte) (n int, err error) {
	var flags uint16
	var max uint32
	var body []byte
START:
	s.stateLock.Lock()
	switch s.state {
	case streamLocalClose:
		fallthrough
	case streamClosed:
		s.stateLock.Unlock()
		if s.session.IsClosed() {
			// local patch: a session's close moves its streams to
			// streamClosed; say why, as every other path does.
			return 0, ErrSessionShutdown
		}
		return 0, ErrStreamClosed
	case streamReset:
		s.stateLock.Unlock()
		return 0, ErrConnectionReset
	}
	s.stateLock.Unlock()

	// If there is no data available, block
	window := atomic.LoadUint32(&s.sendWindow)
	if window == 0 {
		goto WAIT
	}

	// Determine the flags if any
	flags = s.sendFlags()

	// Send up to our send window, and (local patch) no more than the
	// session lets one frame carry on a slow link.
	max = min(min(window, uint32(len(b))), uint32(s.session.frameCap.Load()))
	body = b[:max]

	// Send the header. local patch: counted as sent before it can
	// arrive, so that the peer's acknowledgment of it is never ahead of
	// Sent (see takeAck).
	s.sent.Add(uint64(max))
	s.sendHdr.encode(typeData, flags, s.id, max)
	if err = s.session.waitForSendErr(s.sendHdr, body, s.sendErr); err != nil {
		if errors.Is(err, ErrSessionShutdown) || errors.Is(err, ErrConnectionWriteTimeout) {
			// Message left in ready queue, header re-use is unsafe.
			s.sendHdr = header(make([]byte, headerSize))
		}
		return 0, err
	}

	// Reduce our send window
	atomic.AddUint32(&s.sendWindow, ^uint32(max-1))

	// Unlock
	return int(max), err

WAIT:
	// local patch: see Read.
	select {
	case <-s.session.shutdownCh:
		return 0, ErrSessionShutdown
	default:
	}
	var timeout <-chan time.Time
	var timer *time.Timer
	writeDeadline := s.writeDeadline.Load().(time.Time)
	if !writeDeadline.IsZero() {
		delay := time.Until(writeDeadline)
		timer = time.NewTimer(delay)
		timeout = timer.C
	}
	select {
	case <-s.session.shutdownCh:
		if timer != nil {
			timer.Stop()
		}
		return 0, ErrSessionShutdown
	case <-s.sendNotifyCh:
	case <-timeout:
		return 0, ErrTimeout
	}
	if timer != nil {
		if !timer.Stop() {
			<-timeout
		}
	}
	goto START
}

// sendFlags determines any flags that are appropriate
// based on the current stream state
func (s *Stream) sendFlags() uint16 {
	s.stateLock.Lock()
	defer s.stateLock.Unlock()
	var flags uint16
	switch s.state {
	case streamInit:
		flags |= flagSYN
		s.state = streamSYNSent
	case streamSYNReceived:
		flags |= flagACK
		s.state = streamEstablished
	}
	return flags
}

// sendWindowUpdate potentially sends a window update enabling
// further writes to take place. Must be invoked with the lock.
func (s *Stream) sendWindowUpdate() error {
	s.controlHdrLock.Lock()
	defer s.controlHdrLock.Unlock()
	flags, delta, consumed, ok := s.grant()
	if !ok {
		return nil
	}

	// Send the header, with the acknowledgment that rides before it
	hdr := s.withAck(s.controlHdr, flags, delta, consumed)
	if err := s.session.waitForSendErr(hdr, nil, s.controlErr); err != nil {
		if errors.Is(err, ErrSessionShutdown) || errors.Is(err, ErrConnectionWriteTimeout) {
			// Message left in ready queue, header re-use is unsafe.
			s.controlHdr = newControlHdr()
		}
		return err
	}
	return nil
}

// newControlHdr is a stream's control header, with room for the
// acknowledgment that may follow a window update (local patch).
func newControlHdr() header { return header(make([]byte, headerSize, 2*headerSize)) }

// withAck encodes a window update into buf (which has room for two
// frames) and, on a stream that acknowledges, puts the acknowledgment of
// consumed right before it, so that both leave in one write and the peer
// learns what was consumed before it gets the window that consumption
// opened: what a sender has unacknowledged then never exceeds its window
// (local patch). The caller holds controlHdrLock.
func (s *Stream) withAck(buf header, flags uint16, delta uint32, consumed uint64) header {
	if !s.acks.Load() || consumed == s.ackedSent {
		hdr := buf[:headerSize]
		hdr.encode(typeWindowUpdate, flags, s.id, delta)
		return hdr
	}
	if cap(buf) < 2*headerSize {
		buf = newControlHdr()
	}
	buf = buf[:2*headerSize]
	header(buf[:headerSize]).encode(typeAck, 0, s.id, uint32(consumed))
	header(buf[headerSize:]).encode(typeWindowUpdate, flags, s.id, delta)
	s.ackedSent = consumed
	return buf
}

// grant decides the window update to send and books it: the flags due,
// how far the receive window reopens and what was consumed by then, or ok
// false when none is due (no flags, and less than half the window
// consumed). The caller holds controlHdrLock.
func (s *Stream) grant() (flags uint16, delta uint32, consumed uint64, ok bool) {
	// Determine the flags if any. local patch: before recvLock, not under
	// it: Read takes recvLock under stateLock, and with window updates
	// sent from another goroutine (see deliver) the two orders deadlock.
	// Flags are only set when the update is sent regardless of delta.
	flags = s.sendFlags()
	s.recvLock.Lock()
	defer s.recvLock.Unlock()
	delta = s.windowDelta()
	if flags == 0 && delta < s.session.window()/2 {
		return 0, 0, 0, false
	}
	s.recvWindow += delta
	s.granted += uint64(delta)
	return flags, delta, s.consumed, true
}

// queueWindowUpdate is sendWindowUpdate without waiting for the frame to
// be written (local patch, see Config.QueueAcceptAck): the frame gets a
// header of its own, as the stream's control header may be reused before
// it is sent. It goes to the urgent queue, ahead of the stream's later
// frames, which cannot be written directly while it waits there.
func (s *Stream) queueWindowUpdate() error {
	s.controlHdrLock.Lock()
	defer s.controlHdrLock.Unlock()
	flags, delta, consumed, ok := s.grant()
	if !ok {
		return nil
	}
	return s.session.sendNoWait(s.withAck(newControlHdr(), flags, delta, consumed))
}

// sendClose is used to send a FIN
func (s *Stream) sendClose() error {
	s.controlHdrLock.Lock()
	defer s.controlHdrLock.Unlock()

	flags := s.sendFlags()
	flags |= flagFIN
	// local patch: the FIN counts as a byte sent, as the peer's reader
	// counts it consumed once it reads it (see EnableAcks).
	s.sent.Add(1)
	s.controlHdr.encode(typeWindowUpdate, flags, s.id, 0)
	if err := s.session.waitForSendErr(s.controlHdr, nil, s.controlErr); err != nil {
		if errors.Is(err, ErrSessionShutdown) || errors.Is(err, ErrConnectionWriteTimeout) {
			// Message left in ready queue, header re-use is unsafe.
			s.controlHdr = newControlHdr()
		}
		return err
	}
	return nil
}

// Close is used to close the stream
func (s *Stream) Close() error {
	closeStream := false
	s.stateLock.Lock()
	switch s.state {
	// Opened means we need to signal a close
	case streamSYNSent:
		fallthrough
	case streamSYNReceived:
		fallthrough
	case streamEstablished:
		s.state = streamLocalClose
		goto SEND_CLOSE

	case streamLocalClose:
	case streamRemoteClose:
		s.state = streamClosed
		closeStream = true
		goto SEND_CLOSE

	case streamClosed:
	case streamReset:
	default:
		panic("unhandled state")
	}
	s.stateLock.Unlock()
	return nil
SEND_CLOSE:
	// This shouldn't happen (the more realistic scenario to cancel the
	// timer is via processFlags) but just in case this ever happens, we
	// cancel the timer to prevent dangling timers.
	if s.closeTimer != nil {
		s.closeTimer.Stop()
		s.closeTimer = nil
	}

	// If we have a StreamCloseTimeout set we start the timeout timer.
	// We do this only if we're not already closing the stream since that
	// means this was a graceful close.
	//
	// This prevents memory leaks if one side (this side) closes and the
	// remote side poorly behaves and never responds with a FIN to complete
	// the close. After the specified timeout, we clean our resources up no
	// matter what.
	if !closeStream && s.session.config.StreamCloseTimeout > 0 {
		s.closeTimer = time.AfterFunc(
			s.session.config.StreamCloseTimeout, s.closeTimeout)
	}

	s.stateLock.Unlock()
	s.sendClose()
	// local patch: not the read hook. Ending our writing makes nothing
	// readable; a close that completes a remote one (streamClosed) found
	// the stream readable already, and its hook was fired then.
	s.wakeWaiting()
	if closeStream {
		s.session.closeStream(s.id)
	}
	return nil
}

// Reset aborts the stream. local patch (see PATCHES.md): the stream is
// forgotten at once and the peer gets a RST frame, so its reads and writes
// fail with ErrConnectionReset instead of ending on a clean FIN that would
// pass a truncated transfer off as complete.
func (s *Stream) Reset() error {
	s.stateLock.Lock()
	switch s.state {
	case streamClosed, streamReset:
		s.stateLock.Unlock()
		return nil
	}
	s.state = streamReset
	if s.closeTimer != nil {
		s.closeTimer.Stop()
		s.closeTimer = nil
	}
	s.stateLock.Unlock()
	s.notifyWaiting()
	s.session.closeStream(s.id)

	s.sendLock.Lock()
	defer s.sendLock.Unlock()
	hdr := header(make([]byte, headerSize))
	hdr.encode(typeWindowUpdate, flagRST, s.id, 0)
	return s.session.sendNoWait(hdr)
}

// closeTimeout is called after StreamCloseTimeout during a close to
// close this stream.
func (s *Stream) closeTimeout() {
	// local patch: the timer's goroutine counts as the session's, so
	// Close waits for it; after Close began, forceClose does its work.
	if !s.session.bgEnter() {
		return
	}
	defer s.session.bg.Done()
	// Close our side forcibly
	s.forceClose()

	// Free the stream from the session map
	s.session.closeStream(s.id)

	// Send a RST so the remote side closes too.
	s.sendLock.Lock()
	defer s.sendLock.Unlock()
	hdr := header(make([]byte, headerSize))
	hdr.encode(typeWindowUpdate, flagRST, s.id, 0)
	_ = s.session.sendNoWait(hdr)
}

// forceClose is used for when the session is exiting
func (s *Stream) forceClose() {
	s.stateLock.Lock()
	s.state = streamClosed
	// local patch: a close timer left running would keep the stream, its
	// buffers and the whole session reachable for StreamCloseTimeout (5
	// minutes by default) after the session closed.
	if s.closeTimer != nil {
		s.closeTimer.Stop()
		s.closeTimer = nil
	}
	s.stateLock.Unlock()
	s.notifyWaiting()
}

// processFlags is used to update the state of the stream
// based on set flags, if any. Lock must be held
func (s *Stream) processFlags(flags uint16) error {
	s.stateLock.Lock()
	defer s.stateLock.Unlock()

	// Close the stream without holding the state lock
	closeStream := false
	defer func() {
		if closeStream {
			if s.closeTimer != nil {
				// Stop our close timeout timer since we gracefully closed
				s.closeTimer.Stop()
			}

			s.session.closeStream(s.id)
		}
	}()

	if flags&flagACK == flagACK {
		if s.state == streamSYNSent {
			s.state = streamEstablished
		}
		asyncNotify(s.establishCh)
		s.session.establishStream(s.id)
	}
	if flags&flagFIN == flagFIN {
		s.finRecv = true // local patch, see finRead
		switch s.state {
		case streamSYNSent:
			fallthrough
		case streamSYNReceived:
			fallthrough
		case streamEstablished:
			s.state = streamRemoteClose
			s.notifyWaiting()
		case streamLocalClose:
			s.state = streamClosed
			closeStream = true
			s.notifyWaiting()
		case streamReset:
			// local patch: a FIN that crossed our Reset on the wire is
			// expected, not a protocol error that ends the session.
		default:
			s.session.logger.Printf("[ERR] yamux: unexpected FIN flag in state %d", s.state)
			return ErrUnexpectedFlag
		}
	}
	if flags&flagRST == flagRST {
		s.state = streamReset
		closeStream = true
		s.notifyWaiting()
	}
	return nil
}

// NotifyReadable arranges for f to be called once, when the stream has
// data to read, has ended or was reset, or its session closed — at once if
// that is already so. local patch (see PATCHES.md): it lets a reader wait
// without a goroutine. f runs on the session's receive loop or under
// stream locks, so it must not block (start a goroutine).
func (s *Stream) NotifyReadable(f func()) {
	s.NotifyReadableOrDeliver(f, nil)
}

// NotifyReadableOrDeliver is NotifyReadable, and until f is called every
// data frame that arrives while nothing is buffered goes to deliver
// instead of the buffer (local patch). deliver is called on the session's
// receive loop and must not block: it takes what it can at once and
// returns how much. What it does not take (a full socket, an error) is
// buffered, and f is called, so the reader carries on in order from there.
// A parked reader then costs no goroutine wakeup per message.
func (s *Stream) NotifyReadableOrDeliver(f func(), deliver func([]byte) (int, error)) {
	s.hookLock.Lock()
	s.sink = deliver
	s.readHook = f
	s.hookSeq++
	seq := s.hookSeq
	s.hookLock.Unlock()
	// Data or an end that landed before the hook was set fired nothing;
	// look for it now. Only this hook may be fired from here: by the time
	// the check is done, an event may have fired it, its caller drained
	// the stream and installed the next one, which must wait for news.
	if !s.readable() {
		return
	}
	s.hookLock.Lock()
	if s.hookSeq != seq {
		s.hookLock.Unlock()
		return
	}
	f = s.takeReadHookLocked()
	s.hookLock.Unlock()
	if f != nil {
		f()
	}
}

// Readable reports whether a Read would return without waiting (local patch).
func (s *Stream) Readable() bool { return s.readable() }

func (s *Stream) readable() bool {
	if s.session.IsClosed() {
		return true
	}
	s.stateLock.Lock()
	st := s.state
	s.stateLock.Unlock()
	switch st {
	case streamRemoteClose, streamClosed, streamReset:
		return true
	}
	s.recvLock.Lock()
	defer s.recvLock.Unlock()
	return s.recvBuf.Len() > 0
}

// fireReadHook calls the read hook, if one is set, for an end of the
// stream: the stream stays readable from then on (Read returns EOF or an
// error), so the hook can never be called too early. The caller may hold
// stateLock; hookLock is a leaf.
func (s *Stream) fireReadHook() {
	s.hookLock.Lock()
	f := s.takeReadHookLocked()
	s.hookLock.Unlock()
	if f != nil {
		f()
	}
}

// fireReadHookIfBuffered calls the read hook, if one is set, only while
// data is buffered. Data arrival fires the hook after its lock is dropped;
// by then the data may have been read by the reader an earlier hook woke,
// which may have installed a new hook for data still to come. Checking the
// buffer and taking the hook under recvLock means a hook is only ever
// called for data that is still there. The caller holds no stream lock.
func (s *Stream) fireReadHookIfBuffered() {
	s.recvLock.Lock()
	var f func()
	if s.recvBuf.Len() > 0 {
		s.hookLock.Lock()
		f = s.takeReadHookLocked()
		s.hookLock.Unlock()
	}
	s.recvLock.Unlock()
	if f != nil {
		f()
	}
}

// takeReadHookLocked removes and returns the read hook (and the sink that
// goes with it); the caller holds hookLock.
func (s *Stream) takeReadHookLocked() func() {
	f := s.readHook
	s.readHook, s.sink = nil, nil
	return f
}

// notifyWaiting notifies all the waiting channels, and the read hook: every
// caller has just ended the stream (or the session), which makes it
// readable for good. Close to streamLocalClose, which ends only our
// writing, uses wakeWaiting.
func (s *Stream) notifyWaiting() {
	defer s.fireReadHook()
	s.wakeWaiting()
}

// wakeWaiting notifies all the waiting channels, not the read hook.
func (s *Stream) wakeWaiting() {
	asyncNotify(s.recvNotifyCh)
	asyncNotify(s.sendNotifyCh)
	asyncNotify(s.establishCh)
}

// incrSendWindow updates the size of our send window
func (s *Stream) incrSendWindow(hdr header, flags uint16) error {
	if err := s.processFlags(flags); err != nil {
		return err
	}

	// Increase window, unblock a sender
	atomic.AddUint32(&s.sendWindow, hdr.Length())
	asyncNotify(s.sendNotifyCh)
	return nil
}

// readData is used to handle a data frame
func (s *Stream) readData(hdr header, flags uint16, conn io.Reader) error {
	if err := s.processFlags(flags); err != nil {
		return err
	}

	// Check that our recv window is not exceeded
	length := hdr.Length()
	if length == 0 {
		return nil
	}

	// Wrap in a limited reader
	conn = &io.LimitedReader{R: conn, N: int64(length)}

	// Copy into buffer
	s.recvLock.Lock()

	if s.overrun || length > s.recvWindow {
		// local patch: a peer that overruns one stream's window loses that
		// stream, not the session. The frame's length is honoured (its body
		// is read and dropped), so framing stays intact and every other
		// stream goes on; upstream ends the session, and with it every
		// connection it carries.
		first := !s.overrun
		if first {
			bufLen := s.recvBuf.Len()
			s.hookLock.Lock()
			parked := s.sink != nil
			s.hookLock.Unlock()
			s.session.logger.Printf("[ERR] yamux: receive window exceeded, resetting the stream (stream: %d, remain: %d, recv: %d; "+
				"initial %d + granted %d - received %d = %d, buffered now %d, frames sunk %d buffered %d, sink set %v, update pending %v)",
				s.id, s.recvWindow, length, initialStreamWindow, s.granted, s.received,
				int64(initialStreamWindow)+int64(s.granted)-int64(s.received), bufLen, s.sunk, s.buffered, parked, s.windowUpdating.Load())
		}
		s.overrun = true
		s.recvLock.Unlock()
		if _, err := io.Copy(io.Discard, conn); err != nil {
			return err
		}
		if first {
			// Not on the receive loop: Reset takes sendLock, which a writer
			// waiting for window (from this very loop) may hold.
			s.session.goBg(func() { _ = s.Reset() })
		}
		return nil
	}
	s.received += uint64(length)

	s.hookLock.Lock()
	sink := s.sink
	s.hookLock.Unlock()
	if sink != nil && s.recvBuf.Len() == 0 {
		s.recvWindow -= length
		s.delivering = length
		s.sunk++
		s.recvLock.Unlock()
		return s.deliver(sink, conn, int(length))
	}

	if err := s.recvBuf.fill(conn, int(length), s.recvBufLimit()); err != nil {
		s.session.logger.Printf("[ERR] yamux: Failed to read stream data: %v", err)
		s.recvLock.Unlock()
		return err
	}

	// Decrement the receive window
	s.recvWindow -= length
	s.buffered++
	s.recvQuiet = false
	s.recvLock.Unlock()

	// Unblock any readers
	asyncNotify(s.recvNotifyCh)
	s.fireReadHookIfBuffered()
	return nil
}

// deliver hands a data frame of length bytes, already counted against the
// receive window, to sink (local patch). Whatever sink does not take is
// buffered with the rest of the frame, the sink is dropped and the reader
// woken. Runs on the receive loop, so frames of this stream cannot overtake
// each other.
func (s *Stream) deliver(sink func([]byte) (int, error), conn io.Reader, length int) error {
	bp := s.session.sinkBuffer()
	defer putSinkBuffer(bp)
	buf := *bp
	took := 0 // what the sink has taken of the frame
	for length > 0 {
		chunk := buf
		if length < len(chunk) {
			chunk = chunk[:length]
		}
		if _, err := io.ReadFull(conn, chunk); err != nil {
			s.session.logger.Printf("[ERR] yamux: Failed to read stream data: %v", err)
			return err
		}
		length -= len(chunk)
		n, werr := sink(chunk)
		took += n
		if n == len(chunk) && werr == nil {
			continue
		}
		s.recvLock.Lock()
		s.consumed += uint64(took)
		s.hookLock.Lock()
		s.sink = nil
		s.hookLock.Unlock()
		limit := s.recvBufLimit()
		s.recvBuf.reserve(len(chunk)-n+length, limit)
		s.recvBuf.Write(chunk[n:], limit)
		err := s.recvBuf.fill(conn, length, limit)
		s.recvQuiet = false
		s.delivering = 0
		s.recvLock.Unlock()
		if err != nil {
			s.session.logger.Printf("[ERR] yamux: Failed to read stream data: %v", err)
			return err
		}
		asyncNotify(s.recvNotifyCh)
		s.fireReadHookIfBuffered()
		return nil
	}
	// Delivered data is consumed: the window reopens as if a reader had
	// taken it. The update is sent off the receive loop, which must never
	// wait on the send path. One sender at a time; it looks again after
	// sending, since data delivered meanwhile was not in its delta and the
	// peer may be waiting for exactly that.
	s.recvLock.Lock()
	s.consumed += uint64(took)
	s.delivering = 0
	due := s.windowDueLocked()
	s.recvLock.Unlock()
	if due && s.windowUpdating.CompareAndSwap(false, true) {
		s.session.goBg(func() {
			for {
				_ = s.sendWindowUpdate()
				s.windowUpdating.Store(false)
				if !s.windowDue() || !s.windowUpdating.CompareAndSwap(false, true) {
					return
				}
			}
		})
	}
	return nil
}

// windowDelta is how far the receive window can reopen: what was consumed
// since the last update. Data buffered or on its way to a sink is not
// consumed. The caller holds recvLock.
func (s *Stream) windowDelta() uint32 {
	bufLen := uint32(s.recvBuf.Len())
	w := s.session.window()
	held := uint64(s.recvWindow) + uint64(bufLen) + uint64(s.delivering)
	if held >= uint64(w) {
		// Nothing to reopen. Never wrap: a "negative" delta is a window
		// update of nearly 4 GiB, after which a sender that had used its
		// window believes it has 4 GiB more and overruns the stream.
		return 0
	}
	return w - uint32(held)
}

// windowDue reports whether enough of the receive window is consumed that
// sendWindowUpdate would send (local patch).
func (s *Stream) windowDue() bool {
	s.recvLock.Lock()
	defer s.recvLock.Unlock()
	return s.windowDueLocked()
}

// windowDueLocked is windowDue for a caller that holds recvLock.
func (s *Stream) windowDueLocked() bool {
	return s.windowDelta() >= s.session.window()/2
}

// SetDeadline sets the read and write deadlines
func (s *Stream) SetDeadline(t time.Time) error {
	if err := s.SetReadDeadline(t); err != nil {
		return err
	}
	if err := s.SetWriteDeadline(t); err != nil {
		return err
	}
	return nil
}

// SetReadDeadline sets the deadline for blocked and future Read calls.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.readDeadline.Store(t)
	asyncNotify(s.recvNotifyCh)
	return nil
}

// SetWriteDeadline sets the deadline for blocked and future Write calls
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.writeDeadline.Store(t)
	asyncNotify(s.sendNotifyCh)
	return nil
}

// Shrink is used to compact the amount of buffers utilized
// This is useful when using Yamux in a connection pool to reduce
// the idle memory utilization.
func (s *Stream) Shrink() {
	s.recvLock.Lock()
	if s.recvBuf.Len() == 0 {
		s.recvBuf = recvBuffer{}
	}
	s.recvLock.Unlock()
}

// shrinkIfQuiet gives up the receive buffer if it was empty the last time
// this was called and nothing was buffered since (local patch, see
// Session.ShrinkIdle).
func (s *Stream) shrinkIfQuiet() {
	if !s.recvLock.TryLock() {
		return // receiving: not quiet (and see Session.streamsNoWait)
	}
	defer s.recvLock.Unlock()
	if s.recvBuf.Len() > 0 || s.recvBuf.Cap() == 0 {
		s.recvQuiet = false
		return
	}
	if s.recvQuiet {
		s.recvBuf, s.recvQuiet = recvBuffer{}, false
		return
	}
	s.recvQuiet = true
}

// recvBufLimit is what the receive buffer may grow to while its data fits
// (local patch): the session's stream window, the most a sender may have
// unacknowledged. The caller holds recvLock.
func (s *Stream) recvBufLimit() int { return int(s.session.window()) }

// EnableAcks makes this end acknowledge the data its reader consumes
// (local patch, see PATCHES.md): every window update it sends goes, in the
// same write, right after an acknowledgment of all the stream's data read
// or taken by a sink so far (and of the peer's FIN, once read: it counts
// as a byte, acknowledged at once); Session.FlushAcks acknowledges what
// was consumed since. The peer's Stream.Acked then tells which of the
// bytes it wrote have left yamux at this end — what a sender must keep to
// resend them over another session. Only for a peer that understands the
// frame: an unpatched yamux ends the session on it.
func (s *Stream) EnableAcks() { s.acks.Store(true) }

// Sent is how many data bytes were written on the stream, plus one once
// its FIN was sent (local patch).
func (s *Stream) Sent() uint64 { return s.sent.Load() }

// Acked is how many of the data bytes written on the stream the peer's
// reader has acknowledged consuming (local patch, see EnableAcks). It
// never exceeds Sent.
func (s *Stream) Acked() uint64 { return s.acked.Load() }

// OnAck sets f to be called with the new Acked total whenever an
// acknowledgment raises it (local patch); nil removes it. f runs on the
// session's receive loop and must not block. While f is set, a stream
// that closes with data or its FIN unacknowledged stays known to the
// session until they are acknowledged (a peer acknowledges its reading
// of our FIN after both FINs have crossed), so set nil once nothing more
// is awaited: a peer that never acknowledges holds that until then.
func (s *Stream) OnAck(f func(acked uint64)) {
	if f == nil {
		s.ackHook.Store(nil)
		s.session.forgetLingering(s)
		return
	}
	s.ackHook.Store(&f)
}

// awaitsAcks reports whether someone waits for acknowledgments of data
// (or the FIN) sent on the stream that have not come yet.
func (s *Stream) awaitsAcks() bool {
	return s.ackHook.Load() != nil && s.acked.Load() < s.sent.Load()
}

// finalAck acknowledges, waiting for room in the queue if it must, that
// the reader has read the peer's FIN: nothing more will be consumed, the
// stream may already be gone from the session, and so no FlushAcks would
// find it.
func (s *Stream) finalAck() {
	s.controlHdrLock.Lock()
	defer s.controlHdrLock.Unlock()
	s.recvLock.Lock()
	c := s.consumed
	s.recvLock.Unlock()
	if hdr := s.ackFrame(c); hdr != nil && s.session.sendNoWait(hdr) == nil {
		s.ackedSent = c
	}
}

// ackFrame is the acknowledgment of consumed, or nil when it acknowledges
// nothing new. The caller holds controlHdrLock.
func (s *Stream) ackFrame(consumed uint64) header {
	if consumed == s.ackedSent {
		return nil
	}
	hdr := header(make([]byte, headerSize))
	hdr.encode(typeAck, 0, s.id, uint32(consumed))
	return hdr
}

// takeAck applies an acknowledgment: low is the low 32 bits of the peer's
// total, which can be at most 4 GiB ahead of what was acknowledged before,
// as a stream's window is far smaller. One that would acknowledge data
// never sent, from a confused or lying peer, is ignored: nothing is freed
// on its word. Called by the receive loop only, so acked has one writer.
func (s *Stream) takeAck(low uint32) {
	old := s.acked.Load()
	n := old + uint64(low-uint32(old))
	if n == old || n > s.sent.Load() {
		return
	}
	s.acked.Store(n)
	if f := s.ackHook.Load(); f != nil {
		(*f)(n)
	}
}

// flushAck acknowledges what was consumed since the last acknowledgment,
// if anything, without waiting for room in the urgent queue (see
// Session.FlushAcks).
func (s *Stream) flushAck() {
	// Never wait (see Session.streamsNoWait): a window update being sent
	// holds controlHdrLock, a frame being read recvLock.
	if !s.controlHdrLock.TryLock() {
		return
	}
	defer s.controlHdrLock.Unlock()
	if !s.recvLock.TryLock() {
		return
	}
	c := s.consumed
	s.recvLock.Unlock()
	if hdr := s.ackFrame(c); hdr != nil && s.session.queueUrgent(hdr) {
		s.ackedSent = c
	}
}
