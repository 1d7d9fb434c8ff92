package yamux

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Session is used to wrap a reliable ordered connection and to
// multiplex it into multiple streams.
type Session struct {
	// remoteGoAway indicates the remote side does
	// not want futher connections. Must be first for alignment.
	remoteGoAway int32

	// localGoAway indicates that we should stop
	// accepting futher connections. Must be first for alignment.
	localGoAway int32

	// nextStreamID is the next stream we should
	// send. This depends if we are a client/server.
	nextStreamID uint32

	// config holds our configuration
	config *Config

	// logger is used for our logs
	logger Logger

	// conn is the underlying connection
	conn io.ReadWriteCloser

	// bufRead is a buffered reader (local patch: or conn itself, see
	// Config.ReadBufferSize)
	bufRead io.Reader

	// bg counts the session's goroutines, for Close (local patch).
	bg sync.WaitGroup

	// pings is used to track inflight pings
	pings    map[uint32]chan struct{}
	pingID   uint32
	pingLock sync.Mutex

	// streams maps a stream id to a stream, and inflight has an entry
	// for any outgoing stream that has not yet been established. Both are
	// protected by streamLock.
	streams  map[uint32]*Stream
	inflight map[uint32]struct{}
	// lingering (local patch, under streamLock) holds closed streams
	// still waiting for the peer to acknowledge what they sent (see
	// Stream.OnAck): their last acknowledgment may come after both FINs.
	lingering  map[uint32]*Stream
	streamLock sync.Mutex

	// synCh acts like a semaphore. It is sized to the AcceptBacklog which
	// is assumed to be symmetric between the client and server. This allows
	// the client to avoid exceeding the backlog and instead blocks the open.
	synCh chan struct{}

	// acceptCh is used to pass ready streams to the client
	acceptCh chan *Stream

	// sendCh is used to mark a stream as ready to send,
	// or to send a header out directly.
	sendCh chan *sendReady
	// urgentCh (local patch) queues the frames that go ahead of bulk
	// data (see urgent); the send loop empties it first.
	urgentCh chan *sendReady
	// frameCap (local patch) is the most a data frame, and one write of
	// queued frames, may carry: lowered while writes show a slow link
	// (see noteWrite), so an urgent frame never waits long behind one.
	frameCap atomic.Int64
	// slow (local patch) is whether frameCap is below its maximum, as
	// Config.SlowLink was last told.
	slow atomic.Bool

	// writeMu is held by whoever writes to conn: the send loop, or a
	// caller writing its own frame directly (local patch, see tryDirect).
	writeMu sync.Mutex
	direct  directWatch // bounds direct writes (local patch)

	// recvDoneCh is closed when recv() exits to avoid a race
	// between stream registration and stream shutdown

	// streamWindow (local patch) is the receive window each stream is
	// given: Config.MaxStreamWindowSize, grown by the BDP estimator (see
	// bdpAnswered) up to Config.StreamWindowCap.
	streamWindow atomic.Uint32
	// bdp is the estimator's state, the receive loop's alone.
	bdp struct {
		pinging bool
		id      uint32
		sent    time.Time
		bytes   uint64
		last    time.Time     // the last stream data
		minRTT  time.Duration // the shortest round trip a ping has seen
		samples int
	}

	// pendingPong (local patch) is the last ping whose answer found the
	// urgent queue full, | pongPending; the send loop queues it after its
	// next write.
	pendingPong atomic.Uint64

	// incoming counts the streams the peer opened (local patch, see
	// Config.IncomingStreamLimit); guarded by streamLock.
	incoming int

	// shutdown is used to safely close a session
	shutdown        bool
	shutdownErr     error
	shutdownCh      chan struct{}
	shutdownLock    sync.Mutex
	shutdownErrLock sync.Mutex
}

// sendReady is used to either mark a stream as ready
// or to directly send a header
type sendReady struct {
	Hdr  []byte
	mu   sync.Mutex // Protects Body from unsafe reads.
	Body []byte
	Err  chan error
	// deadline (local patch) is when the caller stops waiting for this
	// frame (its ConnectionWriteTimeout); zero for frames nobody waits
	// on. Until then the send loop may write Body from the caller's
	// buffer instead of copying it (see sendLoop).
	deadline time.Time
}

// newSession is used to construct a new session
func newSession(config *Config, conn io.ReadWriteCloser, client bool) *Session {
	logger := config.Logger
	if logger == nil {
		logger = log.New(config.LogOutput, "", log.LstdFlags)
	}

	// local patch: a peer that may open only IncomingStreamLimit streams
	// in the session's life never has more waiting to be accepted, and
	// each slot of the queue is heap every session carries (256 slots,
	// 2 KiB, on a server whose clients open one stream).
	acceptQueue := config.AcceptBacklog
	if lim := config.IncomingStreamLimit; lim > 0 && lim < acceptQueue {
		acceptQueue = lim
	}
	s := &Session{
		config:     config,
		logger:     logger,
		conn:       conn,
		bufRead:    readBuffer(conn, config.ReadBufferSize),
		pings:      make(map[uint32]chan struct{}),
		streams:    make(map[uint32]*Stream),
		inflight:   make(map[uint32]struct{}),
		lingering:  make(map[uint32]*Stream),
		synCh:      make(chan struct{}, config.AcceptBacklog),
		acceptCh:   make(chan *Stream, acceptQueue),
		sendCh:     make(chan *sendReady, 64),
		urgentCh:   make(chan *sendReady, 64),
		shutdownCh: make(chan struct{}),
	}
	s.frameCap.Store(sendBatch)
	s.streamWindow.Store(config.MaxStreamWindowSize)
	if client {
		s.nextStreamID = 1
	} else {
		s.nextStreamID = 2
	}
	s.goBg(s.recv)
	s.goBg(s.send)
	if config.EnableKeepAlive {
		s.goBg(s.keepalive)
	}
	return s
}

// goBg runs f on a goroutine that Close waits for (local patch), unless
// the session is shutting down, which it reports by returning false.
// Every goroutine the session starts goes through it, so none outlives
// Close. The check and the Add are under shutdownLock, so no Add can
// follow the start of Close's Wait.
func (s *Session) goBg(f func()) bool {
	if !s.bgEnter() {
		return false
	}
	go func() {
		defer s.bg.Done()
		f()
	}()
	return true
}

// bgEnter counts a goroutine that is already running (a timer's) as one
// Close waits for, unless the session is shutting down; on true the caller
// calls s.bg.Done when it is done.
func (s *Session) bgEnter() bool {
	s.shutdownLock.Lock()
	defer s.shutdownLock.Unlock()
	if s.shutdown {
		return false
	}
	s.bg.Add(1)
	return true
}

// IsClosed does a safe check to see if we have shutdown
func (s *Session) IsClosed() bool {
	select {
	case <-s.shutdownCh:
		return true
	default:
		return false
	}
}

// CloseChan returns a read-only channel which is closed as
// soon as the session is closed.
func (s *Session) CloseChan() <-chan struct{} {
	return s.shutdownCh
}

// NumStreams returns the number of currently open streams
func (s *Session) NumStreams() int {
	s.streamLock.Lock()
	num := len(s.streams)
	s.streamLock.Unlock()
	return num
}

// Open is used to create a new stream as a net.Conn
func (s *Session) Open() (net.Conn, error) {
	conn, err := s.OpenStream()
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// OpenStream is used to create a new stream
func (s *Session) OpenStream() (*Stream, error) {
	return s.openStream(nil)
}

// OpenStreamWith opens a stream whose SYN rides on a data frame carrying
// first, so the peer's AcceptStream returns with first already in the
// stream: a peer that bounds the wait for a stream's first bytes then
// measures from their arrival, not from a SYN that crossed a congested
// session seconds earlier (local patch, see PATCHES.md).
func (s *Session) OpenStreamWith(first []byte) (*Stream, error) {
	return s.openStream(first)
}

func (s *Session) openStream(first []byte) (*Stream, error) {
	if s.IsClosed() {
		return nil, ErrSessionShutdown
	}
	if atomic.LoadInt32(&s.remoteGoAway) == 1 {
		return nil, ErrRemoteGoAway
	}

	// Block if we have too many inflight SYNs
	select {
	case s.synCh <- struct{}{}:
	case <-s.shutdownCh:
		return nil, ErrSessionShutdown
	}

GET_ID:
	// Get an ID, and check for stream exhaustion
	id := atomic.LoadUint32(&s.nextStreamID)
	if id >= math.MaxUint32-1 {
		return nil, ErrStreamsExhausted
	}
	if !atomic.CompareAndSwapUint32(&s.nextStreamID, id, id+2) {
		goto GET_ID
	}

	// Register the stream
	stream := newStream(s, id, streamInit)
	s.streamLock.Lock()
	s.streams[id] = stream
	s.inflight[id] = struct{}{}
	s.streamLock.Unlock()

	if s.config.StreamOpenTimeout > 0 {
		s.goBg(func() { s.setOpenTimeout(stream) })
	}

	// Send the window update to create; with first, the data frame
	// creates the stream (sendFlags puts the SYN on it) and the window
	// update follows.
	var err error
	if len(first) > 0 {
		_, err = stream.Write(first)
	}
	if err == nil {
		err = stream.sendWindowUpdate()
	}
	if err != nil {
		select {
		case <-s.synCh:
		default:
			s.logger.Printf("[ERR] yamux: aborted stream open without inflight syn semaphore")
		}
		return nil, err
	}
	return stream, nil
}

// setOpenTimeout implements a timeout for streams that are opened but not established.
// If the StreamOpenTimeout is exceeded we assume the peer is unable to ACK,
// and close the session.
// The number of running timers is bounded by the capacity of the synCh.
func (s *Session) setOpenTimeout(stream *Stream) {
	timer := time.NewTimer(s.config.StreamOpenTimeout)
	defer timer.Stop()

	select {
	case <-stream.establishCh:
		return
	case <-s.shutdownCh:
		return
	case <-timer.C:
		// Timeout reached while waiting for ACK.
		// Close the session to force connection re-establishment.
		s.logger.Printf("[ERR] yamux: aborted stream open (destination=%s): %v", s.RemoteAddr().String(), ErrTimeout.err)
		s.shutdownNow()
	}
}

// Accept is used to block until the next available stream
// is ready to be accepted.
func (s *Session) Accept() (net.Conn, error) {
	conn, err := s.AcceptStream()
	if err != nil {
		return nil, err
	}
	return conn, err
}

// AcceptStream is used to block until the next available stream
// is ready to be accepted.
func (s *Session) AcceptStream() (*Stream, error) {
	select {
	case stream := <-s.acceptCh:
		if s.config.QueueAcceptAck {
			if err := stream.queueWindowUpdate(); err != nil {
				return nil, err
			}
			return stream, nil
		}
		if err := stream.sendWindowUpdate(); err != nil {
			return nil, err
		}
		return stream, nil
	case <-s.shutdownCh:
		return nil, s.shutdownErr
	}
}

// AcceptStream is used to block until the next available stream
// is ready to be accepted.
func (s *Session) AcceptStreamWithContext(ctx context.Context) (*Stream, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case stream := <-s.acceptCh:
		if s.config.QueueAcceptAck {
			if err := stream.queueWindowUpdate(); err != nil {
				return nil, err
			}
			return stream, nil
		}
		if err := stream.sendWindowUpdate(); err != nil {
			return nil, err
		}
		return stream, nil
	case <-s.shutdownCh:
		return nil, s.shutdownErr
	}
}

// Close is used to close the session and all streams. local patch: it
// returns once every goroutine of the session has ended, the receive
// loop having closed every stream on its way out (see goBg). It must not
// be called from the session's own callbacks (a read hook, a sink), which
// run on the receive loop.
func (s *Session) Close() error {
	s.shutdownNow()
	s.bg.Wait()
	return nil
}

// shutdownNow starts the session's end and does not wait for it: the
// goroutines of the session call it (local patch), as Close would wait
// for themselves. Closing the conn ends the receive loop, which then
// closes the streams.
func (s *Session) shutdownNow() {
	s.shutdownLock.Lock()
	defer s.shutdownLock.Unlock()

	if s.shutdown {
		return
	}
	s.shutdown = true

	s.shutdownErrLock.Lock()
	if s.shutdownErr == nil {
		s.shutdownErr = ErrSessionShutdown
	}
	s.shutdownErrLock.Unlock()

	close(s.shutdownCh)

	s.conn.Close()
}

// forceCloseStreams closes every stream; the receive loop runs it when it
// ends, so no frame can reach a stream afterwards.
func (s *Session) forceCloseStreams() {
	s.streamLock.Lock()
	defer s.streamLock.Unlock()
	for _, stream := range s.streams {
		stream.forceClose()
	}
	s.lingering = map[uint32]*Stream{}
}

// exitErr is used to handle an error that is causing the
// session to terminate.
func (s *Session) exitErr(err error) {
	s.shutdownErrLock.Lock()
	if s.shutdownErr == nil {
		s.shutdownErr = err
	}
	s.shutdownErrLock.Unlock()
	s.shutdownNow()
}

// GoAway can be used to prevent accepting further
// connections. It does not close the underlying conn.
func (s *Session) GoAway() error {
	return s.waitForSend(s.goAway(goAwayNormal), nil)
}

// goAway is used to send a goAway message
func (s *Session) goAway(reason uint32) header {
	atomic.SwapInt32(&s.localGoAway, 1)
	hdr := header(make([]byte, headerSize))
	hdr.encode(typeGoAway, 0, 0, reason)
	return hdr
}

// Ping is used to measure the RTT response time
func (s *Session) Ping() (time.Duration, error) {
	// Get a channel for the ping
	ch := make(chan struct{})

	// Get a new ping id, mark as pending
	s.pingLock.Lock()
	id := s.pingID
	s.pingID++
	s.pings[id] = ch
	s.pingLock.Unlock()

	// Send the ping request
	hdr := header(make([]byte, headerSize))
	hdr.encode(typePing, flagSYN, 0, id)
	if err := s.waitForSend(hdr, nil); err != nil {
		return 0, err
	}

	// Wait for a response
	start := time.Now()
	select {
	case <-ch:
	case <-time.After(s.config.ConnectionWriteTimeout):
		s.pingLock.Lock()
		delete(s.pings, id) // Ignore it if a response comes later.
		s.pingLock.Unlock()
		return 0, ErrTimeout
	case <-s.shutdownCh:
		return 0, ErrSessionShutdown
	}

	// Compute the RTT
	return time.Since(start), nil
}

// SendPing queues a ping and returns at once (local patch): its answer
// is not waited for, only received, which is all a heartbeat that judges
// the peer by whether anything arrives needs; Ping costs a goroutine
// waiting for each answer. It reports false when the ping was not queued:
// the session is shutting down, or its urgent queue is full (then the
// session is writing anyway).
func (s *Session) SendPing() bool {
	s.pingLock.Lock()
	id := s.pingID
	s.pingID++
	s.pingLock.Unlock()
	select {
	case <-s.shutdownCh:
		return false
	default:
	}
	return s.queuePing(flagSYN, id)
}

// keepalive is a long running goroutine that periodically does
// a ping to keep the connection alive.
func (s *Session) keepalive() {
	for {
		select {
		case <-time.After(s.config.KeepAliveInterval):
			_, err := s.Ping()
			if err != nil {
				if !errors.Is(err, ErrSessionShutdown) {
					s.logger.Printf("[ERR] yamux: keepalive failed: %v", err)
					s.exitErr(ErrKeepAliveTimeout)
				}
				return
			}
		case <-s.shutdownCh:
			return
		}
	}
}

// waitForSendErr waits to send a header, checking for a potential shutdown
func (s *Session) waitForSend(hdr header, body []byte) error {
	errCh := make(chan error, 1)
	return s.waitForSendErr(hdr, body, errCh)
}

// waitForSendErr waits to send a header with optional data, checking for a
// potential shutdown. Since there's the expectation that sends can happen
// in a timely manner, we enforce the connection write timeout here.
func (s *Session) waitForSendErr(hdr header, body []byte, errCh chan error) error {
	if done, err := s.tryDirect(hdr, body); done {
		return err
	}
	t := timerPool.Get()
	timer := t.(*time.Timer)
	timer.Reset(s.config.ConnectionWriteTimeout)
	defer func() {
		timer.Stop()
		select {
		case <-timer.C:
		default:
		}
		timerPool.Put(t)
	}()

	ready := &sendReady{Hdr: hdr, Body: body, Err: errCh}
	if len(body) >= refBody {
		ready.deadline = time.Now().Add(s.config.ConnectionWriteTimeout)
	}
	select {
	case s.queueFor(hdr, body) <- ready:
	case <-s.shutdownCh:
		return ErrSessionShutdown
	case <-timer.C:
		return ErrConnectionWriteTimeout
	}

	bodyCopy := func() {
		if body == nil {
			return // A nil body is ignored.
		}

		// In the event of session shutdown or connection write timeout,
		// we need to prevent `send` from reading the body buffer after
		// returning from this function since the caller may re-use the
		// underlying array.
		ready.mu.Lock()
		defer ready.mu.Unlock()

		if ready.Body == nil {
			return // Body was already copied in `send`.
		}
		newBody := make([]byte, len(body))
		copy(newBody, body)
		ready.Body = newBody
	}

	select {
	case err := <-errCh:
		return err
	case <-s.shutdownCh:
		bodyCopy()
		return ErrSessionShutdown
	case <-timer.C:
		bodyCopy()
		return ErrConnectionWriteTimeout
	}
}

// tryDirect writes one frame on the caller's goroutine when nobody is
// writing and nothing is queued. local patch (see PATCHES.md): upstream
// hands every frame to the send loop and waits for it, two goroutine
// switches per frame, which dominated small request/response exchanges.
// Frames of one stream stay in order: each caller waits for its frame to
// be written before it sends the next, whichever path wrote it.
//
// The write is bounded by ConnectionWriteTimeout, as a caller of the send
// loop is by its timer: a watchdog (directWatch) cuts it with a past write
// deadline if it is still running then. A conn without deadlines always
// goes through the send loop, so that no caller can block past the
// timeout (upstream's TestSession_ConnectionWriteTimeout). A direct write
// that times out has sent part of a frame: the session ends.
func (s *Session) tryDirect(hdr header, body []byte) (bool, error) {
	dl, ok := s.conn.(writeDeadliner)
	// An urgent frame may pass queued bulk frames; a bulk frame may pass
	// nothing.
	// And while Config.Hold paces bulk frames, they all go through the
	// send loop, which asks it.
	bulk := !urgent(hdr, body)
	queued := len(s.urgentCh) > 0 || bulk && (len(s.sendCh) > 0 || s.config.Hold != nil && s.slow.Load())
	if !ok || queued || !s.writeMu.TryLock() {
		return false, nil
	}
	select {
	case <-s.shutdownCh:
		s.writeMu.Unlock()
		return true, ErrSessionShutdown
	default:
	}
	s.direct.start(dl, s.config.ConnectionWriteTimeout)
	var err error
	start := time.Now()
	switch bw, ok := s.conn.(buffersWriter); {
	case len(body) == 0:
		_, err = s.conn.Write(hdr)
	case ok:
		_, err = bw.WriteBuffers(net.Buffers{hdr, body})
	default:
		buf := make([]byte, 0, len(hdr)+len(body))
		_, err = s.conn.Write(append(append(buf, hdr...), body...))
	}
	s.direct.stop(dl)
	s.writeMu.Unlock()
	if err == nil {
		s.noteWrite(len(hdr)+len(body), time.Since(start))
	}
	if err != nil {
		s.logger.Printf("[ERR] yamux: Failed to write frame: %v", err)
		s.exitErr(err)
		return true, &connError{err}
	}
	return true, nil
}

// connError is the session's connection failing under a write (local
// patch): the writer gets it instead of the bare socket error, so that
// errors.Is(err, ErrSessionShutdown) tells it the session is gone on every
// path, whether its frame went out directly, through the send loop, or
// never left the queue. The socket's error stays underneath for errors.Is
// and errors.As.
type connError struct{ err error }

func (e *connError) Error() string   { return "session shutdown: " + e.err.Error() }
func (e *connError) Unwrap() []error { return []error{ErrSessionShutdown, e.err} }

// writeDeadliner is a conn whose writes can be bounded (a net.Conn).
type writeDeadliner interface {
	SetWriteDeadline(time.Time) error
}

// directWatch bounds direct writes (local patch). One timer serves every
// direct write of the session, as they take turns under writeMu; setting a
// deadline around each write instead cost about a microsecond per frame.
type directWatch struct {
	mu      sync.Mutex
	timer   *time.Timer
	conn    writeDeadliner
	writing bool // a direct write is in progress
	fired   bool // the watchdog cut it (or just missed it)
}

func (w *directWatch) start(conn writeDeadliner, d time.Duration) {
	w.mu.Lock()
	w.conn, w.writing, w.fired = conn, true, false
	if w.timer == nil {
		w.timer = time.AfterFunc(d, w.expire)
	} else {
		w.timer.Reset(d)
	}
	w.mu.Unlock()
}

func (w *directWatch) expire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.writing {
		w.fired = true
		_ = w.conn.SetWriteDeadline(time.Unix(1, 0))
	}
}

// stop ends the watch; a deadline the watchdog set just as the write
// finished is cleared, so that it cannot fail the next write.
func (w *directWatch) stop(conn writeDeadliner) {
	w.timer.Stop()
	w.mu.Lock()
	w.writing = false
	fired := w.fired
	w.mu.Unlock()
	if fired {
		_ = conn.SetWriteDeadline(time.Time{})
	}
}

// buffersWriter is a conn that can write several buffers in one syscall
// (writev), such as a wrapper around *net.TCPConn using net.Buffers.
type buffersWriter interface {
	WriteBuffers(net.Buffers) (int64, error)
}

// sendNoWait does a send without waiting. Since there's the expectation that
// the send happens right here, we enforce the connection write timeout if we
// can't queue the header to be sent.
func (s *Session) sendNoWait(hdr header) error {
	t := timerPool.Get()
	timer := t.(*time.Timer)
	timer.Reset(s.config.ConnectionWriteTimeout)
	defer func() {
		timer.Stop()
		select {
		case <-timer.C:
		default:
		}
		timerPool.Put(t)
	}()

	select {
	case s.queueFor(hdr, nil) <- &sendReady{Hdr: hdr}:
		return nil
	case <-s.shutdownCh:
		return ErrSessionShutdown
	case <-timer.C:
		return ErrConnectionWriteTimeout
	}
}

// urgent reports whether a frame goes ahead of bulk data (local patch):
// every frame but data and FINs — window updates, pings and their
// replies, resets, go-aways — and data frames that open a stream or are
// small, such as a new connection's header or an interactive echo. A
// stream's frames cannot overtake each other this way: its writer waits
// for each frame to be written before it sends the next, and a FIN, which
// follows data written by other goroutines too, stays in the bulk queue.
func urgent(hdr header, body []byte) bool {
	flags := hdr.Flags()
	switch {
	case flags&flagFIN != 0:
		return false
	case hdr.MsgType() != typeData, flags&flagSYN != 0:
		return true
	}
	return len(body) <= urgentData
}

// urgentData is the largest data frame that counts as interactive.
const urgentData = 2 << 10

func (s *Session) queueFor(hdr header, body []byte) chan *sendReady {
	if urgent(hdr, body) {
		return s.urgentCh
	}
	return s.sendCh
}

// noteWrite adjusts frameCap to a write of n bytes that took d (local
// patch). A write that waits shows the link draining slower than we send:
// the cap becomes what the link drains in frameTime, so that nothing
// urgent waits much longer than that behind a write in progress. Writes
// that do not wait let it grow back. Tiny writes say nothing.
func (s *Session) noteWrite(n int, d time.Duration) {
	if n < 4<<10 {
		return
	}
	c := s.frameCap.Load()
	if d < time.Millisecond {
		if c < sendBatch {
			c *= 2
			if c > sendBatch {
				c = sendBatch
			}
			s.frameCap.Store(c)
			s.noteSlow(c < sendBatch)
		}
		return
	}
	target := int64(float64(n) / d.Seconds() * frameTime.Seconds())
	if target < minFrameCap {
		target = minFrameCap
	}
	if target > sendBatch {
		target = sendBatch
	}
	// Whole multiples of minFrameCap: frames of odd sizes would cut a
	// reader's fixed-size reads short for no gain.
	c = (c + target) / 2 / minFrameCap * minFrameCap
	s.frameCap.Store(c)
	s.noteSlow(c < sendBatch)
}

// noteSlow tells Config.SlowLink when the link turns slow or fast.
func (s *Session) noteSlow(slow bool) {
	if s.config.SlowLink != nil && s.slow.CompareAndSwap(!slow, slow) {
		s.config.SlowLink(slow)
	}
}

// frameTime is how long one data frame may occupy a slow link, and
// minFrameCap the smallest cap: below it, headers and wakeups would cost
// more than the latency they save. 4 KiB is 16 ms at 2 Mbit/s, about
// what a paced link's queue holds (see Config.Hold); 16 KiB was 66 ms.
const (
	frameTime   = 10 * time.Millisecond
	minFrameCap = 4 << 10
)

// send is a long running goroutine that sends data
func (s *Session) send() {
	if err := s.sendLoop(); err != nil {
		s.exitErr(err)
	}
}

func (s *Session) sendLoop() error {
	// local patch (see PATCHES.md): a frame's header and body go out in one
	// write, and frames already queued behind it join the same write, up to
	// frameCap bytes; urgent frames first. Upstream writes header and body
	// separately: two syscalls per frame, and a wakeup of the writer
	// between every pair, and sends every frame in arrival order.
	var buf []byte
	var box *[]byte // buf's box while the loop holds it (see batchPool)
	var batch []*sendReady
	// refs (local patch) are the batch's frames whose bodies the write
	// takes from their callers' buffers rather than from buf; each one's
	// mu stays locked until the write is over, so that a caller giving up
	// (bodyCopy) waits for it instead of reusing the buffer under it.
	// cuts[i] is where in buf refs[i]'s body goes, vec the write's list.
	var refs []*sendReady
	var cuts []int
	var vec net.Buffers
	dl, canDeadline := s.conn.(writeDeadliner)
	bw, canVec := s.conn.(buffersWriter)
	canRef := canDeadline && canVec
	// held (local patch) is a bulk frame that Config.Hold keeps back
	// while urgent frames still go; since is when it left the queue.
	// wasHeld is whether Hold kept back what goes out next, and unheld
	// counts the bulk writes in a row it did not, while it paces them
	// (see noteWrite below).
	var held *sendReady
	var since time.Time
	wasHeld, unheld := false, 0
	var holdTimer *time.Timer
	defer func() {
		if holdTimer != nil {
			holdTimer.Stop()
		}
	}()
	for {
		var ready *sendReady
		if held == nil {
			select {
			case ready = <-s.urgentCh:
			default:
				// Nothing to send: the batch buffer goes back to the
				// pool while the loop waits (local patch), so a quiet
				// session holds none; it grows to the largest batch.
				if box != nil {
					*box = buf
					batchPool.put(box)
					box, buf = nil, nil
				}
				select {
				case ready = <-s.urgentCh:
				case held = <-s.sendCh:
					since = time.Now()
				case <-s.shutdownCh:
					return nil
				}
			}
		} else {
			select {
			case ready = <-s.urgentCh:
			default:
			}
		}
		if ready == nil {
			if d := s.hold(); d > 0 {
				wasHeld = true
				if holdTimer == nil {
					holdTimer = time.NewTimer(d)
				} else {
					holdTimer.Reset(d)
				}
				select {
				case ready = <-s.urgentCh:
					holdTimer.Stop()
				case <-holdTimer.C:
					continue
				case <-s.shutdownCh:
					return nil
				}
			} else {
				ready, held = held, nil
			}
		}
		// A batch that starts with urgent frames while a bulk frame is
		// held takes only urgent frames.
		urgentOnly := held != nil
		if box == nil {
			box = batchPool.get(0)
			buf = *box
		}
		// The lock comes before the batch: a body the write takes from
		// its caller's buffer is locked from here to the write's end,
		// which must not include a wait for a direct writer.
		s.writeMu.Lock()
		buf, batch, refs, cuts = buf[:0], batch[:0], refs[:0], cuts[:0]
		limit := int(s.frameCap.Load())
		size := 0 // bytes in the write: buf and the referenced bodies
		var first time.Time
	BATCH:
		for {
			buf = append(buf, ready.Hdr...)
			size += len(ready.Hdr)
			ready.mu.Lock()
			switch {
			case ready.Body == nil:
				ready.mu.Unlock()
			case canRef && len(ready.Body) >= refBody && time.Until(ready.deadline) > 0:
				// Written from the caller's buffer; mu stays locked.
				refs, cuts = append(refs, ready), append(cuts, len(buf))
				size += len(ready.Body)
				if first.IsZero() || ready.deadline.Before(first) {
					first = ready.deadline
				}
			default:
				buf = append(buf, ready.Body...)
				size += len(ready.Body)
				ready.Body = nil
				ready.mu.Unlock()
			}
			batch = append(batch, ready)
			if size >= limit {
				break
			}
			select {
			case ready = <-s.urgentCh:
			default:
				if urgentOnly {
					break BATCH
				}
				select {
				case ready = <-s.urgentCh:
				case ready = <-s.sendCh:
				default:
					break BATCH
				}
			}
		}
		// A write's time starts when it holds the lock (a direct writer
		// may have it), or, for a bulk frame Hold held, when it left the
		// queue: the link was what it waited for.
		start := time.Now()
		if wasHeld && !urgentOnly {
			start = since
		}
		var err error
		if len(refs) == 0 {
			_, err = s.conn.Write(buf)
		} else {
			err = s.writeRefs(dl, bw, buf, refs, cuts, &vec, first)
		}
		d := time.Since(start)
		s.writeMu.Unlock()
		var sendErr error
		if err != nil {
			sendErr = &connError{err}
		}
		for _, r := range batch {
			asyncSendErr(r.Err, sendErr)
		}
		if err != nil {
			s.logger.Printf("[ERR] yamux: Failed to write frames: %v", err)
			return err
		}
		switch {
		case urgentOnly:
			// Control frames say little about the link, and noteWrite
			// ignores small writes anyway. The bulk frame in hand is
			// still the one Hold kept back: wasHeld stays.
			s.noteWrite(size, d)
		case wasHeld || s.config.Hold == nil || !s.slow.Load():
			unheld = 0
			s.noteWrite(size, d)
			wasHeld = false
		default:
			// Hold keeps the kernel's queue short, so a paced write never
			// waits in it: that it was quick says the pacing works, not
			// that the link is fast. Only a run of writes that Hold let
			// go at once does.
			if unheld++; unheld >= fastRun {
				s.noteWrite(size, d)
			}
		}
		if v := s.pendingPong.Swap(0); v != 0 && !s.queuePong(uint32(v)) {
			s.pendingPong.CompareAndSwap(0, v)
		}
		if cap(buf) > 4*sendBatch {
			buf = nil // a huge frame passed; do not keep its buffer
		}
	}
}

// writeRefs writes a batch whose larger bodies stay in their callers'
// buffers (local patch): buf holds the headers and small bodies, and
// refs[i]'s body goes at buf offset cuts[i], all in one writev. Copying
// every body into buf cost a user-space copy of every byte whenever
// several streams were sending at once (a lone sender writes directly,
// see tryDirect). The write is bounded as a direct write is: it is cut
// (and the session ends) when the first of its callers would stop
// waiting, so a caller whose body it holds never waits past its
// ConnectionWriteTimeout. refs' locks are released, their bodies
// dropped, and vec cleared (it must not keep callers' buffers).
func (s *Session) writeRefs(dl writeDeadliner, bw buffersWriter, buf []byte, refs []*sendReady, cuts []int, vec *net.Buffers, first time.Time) error {
	v, prev := (*vec)[:0], 0
	for i, r := range refs {
		v = append(v, buf[prev:cuts[i]], r.Body)
		prev = cuts[i]
	}
	if prev < len(buf) {
		v = append(v, buf[prev:])
	}
	// WriteBuffers may consume its argument's elements; v keeps the
	// length to clear them all after.
	s.direct.start(dl, time.Until(first))
	_, err := bw.WriteBuffers(v)
	s.direct.stop(dl)
	for _, r := range refs {
		r.Body = nil
		r.mu.Unlock()
	}
	for i := range v {
		v[i] = nil
	}
	*vec = v[:0]
	return err
}

// refBody is the size from which the send loop writes a body from its
// caller's buffer instead of copying it into the batch (local patch).
const refBody = 16 << 10

// batchPool holds send loops' batch buffers, each in its box (a *[]byte
// that travels with it), while their sessions are quiet (local patch).
var batchPool bufPool

// fastRun is how many bulk writes in a row Config.Hold must let go at
// once before their speed counts (see sendLoop).
const fastRun = 8

// hold is how long bulk frames wait before the send loop asks again
// (local patch): Config.Hold's answer while the link is slow, else 0.
func (s *Session) hold() time.Duration {
	if s.config.Hold == nil || !s.slow.Load() {
		return 0
	}
	return s.config.Hold()
}

// sendBatch bounds how many bytes of queued frames one write carries, and
// the largest frameCap.
const sendBatch = 256 << 10

// recv is a long running goroutine that accepts new data
func (s *Session) recv() {
	if err := s.recvLoop(); err != nil {
		s.exitErr(err)
	}
	s.shutdownNow()
	s.forceCloseStreams()
}

// Ensure that the index of the handler (typeData/typeWindowUpdate/etc) matches the message type
var (
	handlers = []func(*Session, header) error{
		typeData:         (*Session).handleStreamMessage,
		typeWindowUpdate: (*Session).handleStreamMessage,
		typePing:         (*Session).handlePing,
		typeGoAway:       (*Session).handleGoAway,
		typeAck:          (*Session).handleAck,
	}
)

// recvLoop continues to receive data until a fatal error is encountered
func (s *Session) recvLoop() error {
	hdr := header(make([]byte, headerSize))
	for {
		// Read the header
		if _, err := io.ReadFull(s.bufRead, hdr); err != nil {
			if err != io.EOF && !strings.Contains(err.Error(), "closed") && !strings.Contains(err.Error(), "reset by peer") {
				s.logger.Printf("[ERR] yamux: Failed to read header: %v", err)
			}
			return err
		}

		// Verify the version
		if hdr.Version() != protoVersion {
			s.logger.Printf("[ERR] yamux: Invalid protocol version: %d", hdr.Version())
			return ErrInvalidVersion
		}

		mt := hdr.MsgType()
		if mt < typeData || mt > typeAck {
			return ErrInvalidMsgType
		}

		if err := handlers[mt](s, hdr); err != nil {
			return err
		}
	}
}

// handleStreamMessage handles either a data or window update frame
func (s *Session) handleStreamMessage(hdr header) error {
	// Check for a new stream creation
	id := hdr.StreamID()
	flags := hdr.Flags()
	if flags&flagSYN == flagSYN {
		if err := s.incomingStream(id); err != nil {
			return err
		}
	}

	// Get the stream
	s.streamLock.Lock()
	stream := s.streams[id]
	s.streamLock.Unlock()

	// If we do not have a stream, likely we sent a RST
	if stream == nil {
		// Drain any data on the wire
		if hdr.MsgType() == typeData && hdr.Length() > 0 {
			s.logger.Printf("[WARN] yamux: Discarding data for stream: %d", id)
			if _, err := io.CopyN(ioutil.Discard, s.bufRead, int64(hdr.Length())); err != nil {
				s.logger.Printf("[ERR] yamux: Failed to discard data: %v", err)
				return nil
			}
		} else {
			s.logger.Printf("[WARN] yamux: frame for missing stream: %v", hdr)
		}
		return nil
	}

	// Check if this is a window update
	if hdr.MsgType() == typeWindowUpdate {
		if err := stream.incrSendWindow(hdr, flags); err != nil {
			if sendErr := s.sendNoWait(s.goAway(goAwayProtoErr)); sendErr != nil {
				s.logger.Printf("[WARN] yamux: failed to send go away: %v", sendErr)
			}
			return err
		}
		return nil
	}

	// Read the new data
	s.bdpReceived(hdr.Length())
	if err := stream.readData(hdr, flags, s.bufRead); err != nil {
		if sendErr := s.sendNoWait(s.goAway(goAwayProtoErr)); sendErr != nil {
			s.logger.Printf("[WARN] yamux: failed to send go away: %v", sendErr)
		}
		return err
	}
	return nil
}

// handlePing is invokde for a typePing frame
func (s *Session) handlePing(hdr header) error {
	flags := hdr.Flags()
	pingID := hdr.Length()

	// Check if this is a query. local patch: the reply goes straight onto
	// the urgent queue; when the queue is full it is kept in one slot
	// (pendingPong) for the send loop, a later ping's in place of an
	// earlier one's. Upstream
	// starts a goroutine per ping, each waiting up to the write timeout: a
	// peer that floods pings and never reads made a server start over a
	// million of them (gigabytes) before any authentication. A full urgent
	// queue means the session cannot write for now; the kept answer goes
	// once it drains. The answers a flood loses to the one slot cost the
	// flooder its answers, nothing else.
	if flags&flagSYN == flagSYN {
		if !s.queuePong(pingID) {
			// Answered when the send loop has room again; a later ping
			// takes the place of this one.
			s.pendingPong.Store(uint64(pingID) | pongPending)
		}
		return nil
	}

	// Handle a response
	if pingID&bdpPing != 0 {
		s.bdpAnswered(pingID)
		return nil
	}
	s.pingLock.Lock()
	ch := s.pings[pingID]
	if ch != nil {
		delete(s.pings, pingID)
		close(ch)
	}
	s.pingLock.Unlock()
	return nil
}

// windowIdleReset is how long a session may receive no stream data
// before grown windows go back to MaxStreamWindowSize (local patch).
var windowIdleReset = 10 * time.Second

// bdpSamples is how many round trips the estimator measures before it
// trusts the shortest, bdpMinRTT the shortest path it grows windows for,
// and bdpEvery the least time between two of its pings (local patch).
const (
	bdpSamples = 4
	bdpMinRTT  = 5 * time.Millisecond
	bdpEvery   = 50 * time.Millisecond
)

// bdpPing marks the ids of the estimator's pings (local patch); other
// pings count up from 0 and never reach it.
const bdpPing = 1 << 31

// bdpReceived counts n bytes of stream data arriving (local patch): with
// auto-tuning on (Config.StreamWindowCap) and no estimate under way, it
// starts one with a ping, and counts what arrives until its answer. It
// runs on the receive loop only.
func (s *Session) bdpReceived(n uint32) {
	if s.config.StreamWindowCap <= s.config.MaxStreamWindowSize || n == 0 {
		return
	}
	now := time.Now()
	if !s.bdp.last.IsZero() && now.Sub(s.bdp.last) > windowIdleReset {
		// After a quiet spell, windows start small again: what the path
		// carried then says nothing about the streams to come.
		s.streamWindow.Store(s.config.MaxStreamWindowSize)
	}
	s.bdp.last = now
	if s.bdp.pinging {
		s.bdp.bytes += uint64(n)
		return
	}
	// One estimate per bdpEvery at most (a ping and its answer are two
	// writes; one per round trip on loopback would be thousands a
	// second), and none once the window is at its cap.
	if now.Sub(s.bdp.sent) < bdpEvery || s.streamWindow.Load() >= s.config.StreamWindowCap {
		return
	}
	s.bdp.id = (s.bdp.id + 1) | bdpPing
	if s.queuePing(flagSYN, s.bdp.id) {
		s.bdp.pinging, s.bdp.sent, s.bdp.bytes = true, now, uint64(n)
	}
}

// bdpAnswered takes the answer to the estimator's ping (local patch): what
// arrived during that round trip, scaled to the shortest round trip seen,
// is what the path carries in one: a sample of the bandwidth-delay
// product. When it reaches half the streams' window, the window was
// likely what limited the senders, and the window becomes twice the
// sample (gRPC's BDP estimator), at most StreamWindowCap and WindowBudget
// shared by the open streams. It never shrinks here: a stream's window is
// only ever reopened by what its reader consumed.
func (s *Session) bdpAnswered(id uint32) {
	if !s.bdp.pinging || id != s.bdp.id {
		return
	}
	s.bdp.pinging = false
	rtt := time.Since(s.bdp.sent)
	if s.bdp.minRTT == 0 || rtt < s.bdp.minRTT {
		s.bdp.minRTT = rtt
	}
	s.bdp.samples++
	// A few round trips before the shortest is believed, and none on a
	// path whose round trip is so short that the starting window carries
	// more than a tunnel does (4 MiB in 5 ms is 6.7 Gbit/s). None while
	// this end's writes show a slow link (see noteWrite): the link is the
	// bottleneck there, its round trips are mostly queue, and a grown
	// window only queues more behind it.
	if s.bdp.samples < bdpSamples || s.bdp.minRTT < bdpMinRTT || s.slow.Load() {
		return
	}
	// What arrived per round trip at the path's own round trip, not at
	// this ping's: on a short path the ping waits behind data queued in
	// socket buffers, and counting that as path would grow windows on
	// loopback, where nothing needs them, into memory held for slow
	// readers.
	sample := s.bdp.bytes
	if rtt > 0 {
		sample = uint64(float64(sample) * float64(s.bdp.minRTT) / float64(rtt))
	}
	// Half the window: a sender limited by its window gets well under a
	// window per round trip through, since the window reopens in halves
	// as the reader consumes it (gRPC's two thirds missed it at 200 ms).
	w := uint64(s.streamWindow.Load())
	if sample*2 < w {
		return
	}
	grow := min64(2*sample, uint64(s.config.StreamWindowCap))
	if b := s.config.WindowBudget; b > 0 {
		s.streamLock.Lock()
		n := uint64(len(s.streams))
		s.streamLock.Unlock()
		grow = min64(grow, b/max64(n, 1))
	}
	if grow > w {
		s.streamWindow.Store(uint32(grow))
	}
}

func min64(a, b uint64) uint64 {
	if a < b {
		return a
	}
	return b
}

func max64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// window is the receive window a stream reopens to (local patch).
func (s *Session) window() uint32 { return s.streamWindow.Load() }

// queuePong queues the answer to ping id if the urgent queue has room
// (local patch, see handlePing).
func (s *Session) queuePong(id uint32) bool { return s.queuePing(flagACK, id) }

// queuePing queues a ping frame (flagSYN: a ping, flagACK: an answer) if
// the urgent queue has room, without waiting (local patch): the
// heartbeat's pings, the BDP estimator's and the answers to the peer's.
func (s *Session) queuePing(flags uint16, id uint32) bool {
	hdr := header(make([]byte, headerSize))
	hdr.encode(typePing, flags, 0, id)
	return s.queueUrgent(hdr)
}

// queueUrgent puts a frame on the urgent queue if it has room, without
// waiting (local patch).
func (s *Session) queueUrgent(hdr header) bool {
	select {
	case s.urgentCh <- &sendReady{Hdr: hdr}:
		return true
	default:
		return false
	}
}

// pongPending marks pendingPong as holding a ping's id.
const pongPending = 1 << 32

// handleGoAway is invokde for a typeGoAway frame
func (s *Session) handleGoAway(hdr header) error {
	code := hdr.Length()
	switch code {
	case goAwayNormal:
		atomic.SwapInt32(&s.remoteGoAway, 1)
	case goAwayProtoErr:
		s.logger.Printf("[ERR] yamux: received protocol error go away")
		return fmt.Errorf("yamux protocol error")
	case goAwayInternalErr:
		s.logger.Printf("[ERR] yamux: received internal error go away")
		return fmt.Errorf("remote yamux internal error")
	default:
		s.logger.Printf("[ERR] yamux: received unexpected go away")
		return fmt.Errorf("unexpected go away received")
	}
	return nil
}

// incomingStream is used to create a new incoming stream
func (s *Session) incomingStream(id uint32) error {
	// Reject immediately if we are doing a go away
	if atomic.LoadInt32(&s.localGoAway) == 1 {
		hdr := header(make([]byte, headerSize))
		hdr.encode(typeWindowUpdate, flagRST, id, 0)
		return s.sendNoWait(hdr)
	}

	// local patch: the peer opens streams with its own parity (a client
	// odd ids, a server even ones) and never stream 0; anything else is
	// a protocol error, not a stream to accept.
	if id == 0 || (id%2 == 1) != (atomic.LoadUint32(&s.nextStreamID)%2 == 0) {
		s.logger.Printf("[ERR] yamux: peer opened stream %d, which is not one of its ids", id)
		if sendErr := s.sendNoWait(s.goAway(goAwayProtoErr)); sendErr != nil {
			s.logger.Printf("[WARN] yamux: failed to send go away: %v", sendErr)
		}
		return ErrInvalidStreamID
	}

	s.streamLock.Lock()
	defer s.streamLock.Unlock()

	// local patch: past the peer's stream allowance, refuse before
	// allocating. The RST is only queued if there is room: a peer
	// flooding SYNs must not block the receive loop on its replies.
	if lim := s.config.IncomingStreamLimit; lim > 0 && s.incoming >= lim {
		hdr := header(make([]byte, headerSize))
		hdr.encode(typeWindowUpdate, flagRST, id, 0)
		select {
		case s.urgentCh <- &sendReady{Hdr: hdr}:
		default:
		}
		return nil
	}
	s.incoming++

	// Allocate a new stream
	stream := newStream(s, id, streamSYNReceived)

	// Check if stream already exists
	if _, ok := s.streams[id]; ok {
		s.logger.Printf("[ERR] yamux: duplicate stream declared")
		if sendErr := s.sendNoWait(s.goAway(goAwayProtoErr)); sendErr != nil {
			s.logger.Printf("[WARN] yamux: failed to send go away: %v", sendErr)
		}
		return ErrDuplicateStream
	}

	// Register the stream
	s.streams[id] = stream

	// Check if we've exceeded the backlog
	select {
	case s.acceptCh <- stream:
		return nil
	default:
		// Backlog exceeded! RST the stream
		s.logger.Printf("[WARN] yamux: backlog exceeded, forcing connection reset")
		delete(s.streams, id)
		hdr := header(make([]byte, headerSize))
		hdr.encode(typeWindowUpdate, flagRST, id, 0)
		return s.sendNoWait(hdr)
	}
}

// closeStream is used to close a stream once both sides have
// issued a close. If there was an in-flight SYN and the stream
// was not yet established, then this will give the credit back.
func (s *Session) closeStream(id uint32) {
	s.streamLock.Lock()
	if _, ok := s.inflight[id]; ok {
		select {
		case <-s.synCh:
		default:
			s.logger.Printf("[ERR] yamux: SYN tracking out of sync")
		}
	}
	if st := s.streams[id]; st != nil && st.awaitsAcks() {
		s.lingering[id] = st
	}
	delete(s.streams, id)
	s.streamLock.Unlock()
}

// establishStream is used to mark a stream that was in the
// SYN Sent state as established.
func (s *Session) establishStream(id uint32) {
	s.streamLock.Lock()
	if _, ok := s.inflight[id]; ok {
		delete(s.inflight, id)
	} else {
		s.logger.Printf("[ERR] yamux: established stream without inflight SYN (no tracking entry)")
	}
	select {
	case <-s.synCh:
	default:
		s.logger.Printf("[ERR] yamux: established stream without inflight SYN (didn't have semaphore)")
	}
	s.streamLock.Unlock()
}

// handleAck takes a stream's acknowledgment (local patch, see
// Stream.EnableAcks). One for a stream that is gone (it crossed a reset or
// a close) is nothing to act on.
func (s *Session) handleAck(hdr header) error {
	id := hdr.StreamID()
	s.streamLock.Lock()
	stream := s.streams[id]
	if stream == nil {
		stream = s.lingering[id]
	}
	s.streamLock.Unlock()
	if stream == nil {
		return nil
	}
	stream.takeAck(hdr.Length())
	if !stream.awaitsAcks() {
		s.forgetLingering(stream)
	}
	return nil
}

// forgetLingering drops st from the closed streams waiting for
// acknowledgments, if it is there (local patch).
func (s *Session) forgetLingering(st *Stream) {
	s.streamLock.Lock()
	if s.lingering[st.id] == st {
		delete(s.lingering, st.id)
	}
	s.streamLock.Unlock()
}

// FlushAcks acknowledges, on every stream whose reader asked for
// acknowledgments, what its reader consumed since the last one (local
// patch). Window updates carry acknowledgments as they go; a stream whose
// reader took less than half a window since the last update sends none,
// and this is what acknowledges it. It never waits: a stream whose frame
// finds the urgent queue full is acknowledged on the next call.
func (s *Session) FlushAcks() {
	var arr [8]*Stream
	for _, st := range s.streamsNoWait(arr[:0]) {
		if st.acks.Load() {
			st.flushAck()
		}
	}
}

// streamsNoWait appends the open streams to buf, or nothing if another
// holds streamLock: the session chores (ShrinkIdle, FlushAcks) run on a
// liveness monitor and never wait for a lock. The receive loop holds a
// stream's recvLock while it reads a frame off the socket, which a black
// hole can stall for as long as TCP's own timeouts (found by the tunnel's
// fault tests: the heartbeat timeout was missed); so each chore skips a
// busy stream, or session, for the round.
func (s *Session) streamsNoWait(buf []*Stream) []*Stream {
	if !s.streamLock.TryLock() {
		return buf
	}
	defer s.streamLock.Unlock()
	for _, st := range s.streams {
		buf = append(buf, st)
	}
	return buf
}

// ShrinkIdle gives up the receive buffers of streams that hold no data
// and have buffered none since the previous call (local patch). Called
// every few seconds (the tunnel's session monitor does), it frees what a
// burst left on a stream that then went quiet, while a busy stream keeps
// its buffer: giving one up each time it is drained costs an allocation
// per frame, and slowed a reader that drains every frame enough to skew
// the window estimator's round trips.
func (s *Session) ShrinkIdle() {
	var arr [8]*Stream
	for _, st := range s.streamsNoWait(arr[:0]) {
		st.shrinkIfQuiet()
	}
}

// sinkBuffer returns a buffer for carrying a frame from bufRead to a
// stream's sink (local patch); putSinkBuffer gives it back once the frame
// is delivered. The buffers are shared by every session of the process: a
// session holds one only while its receive loop delivers, so a thousand
// idle sessions that once moved data hold none (each kept its own before,
// DeliverBufferSize of heap for the session's life).
func (s *Session) sinkBuffer() *[]byte {
	n := s.config.DeliverBufferSize
	if n <= 0 {
		n = defaultDeliverBufferSize
	}
	return sinkPool.get(n)
}

func putSinkBuffer(bp *[]byte) { sinkPool.put(bp) }

var sinkPool bufPool

// bufPool lends byte buffers shared by the process's sessions (local
// patch), each in the box (a *[]byte) it travels in, so that lending and
// returning allocate nothing and a buffer can come back grown.
type bufPool struct{ p sync.Pool }

// get returns a box holding a buffer of length n; a pooled buffer with
// less room is dropped for a new one.
func (bp *bufPool) get(n int) *[]byte {
	if b, _ := bp.p.Get().(*[]byte); b != nil && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n)
	return &b
}

func (bp *bufPool) put(b *[]byte) { bp.p.Put(b) }

// readBuffer is the receive loop's reader on conn (local patch): buffered
// with size bytes, 0 meaning bufio's default (4 KiB), or conn itself when
// size is negative.
func readBuffer(conn io.Reader, size int) io.Reader {
	switch {
	case size < 0:
		return conn
	case size == 0:
		return bufio.NewReader(conn)
	}
	return bufio.NewReaderSize(conn, size)
}

// defaultDeliverBufferSize is Config.DeliverBufferSize's default.
const defaultDeliverBufferSize = 256 << 10
