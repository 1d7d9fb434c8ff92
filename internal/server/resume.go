package server

// Resumption. A session whose client and server agreed a resume window
// outlives the mux session that carries it (its carrier): when the
// carrier is lost to the network, the session goes away instead of
// ending. Its public listeners stay open (the ports stay the client's),
// every public connection stays open with what it wrote kept until the
// client's reader acknowledges it (package resume), and new public
// connections are held, up to resume_hold per tunnel. A client that
// comes back within the window, authenticated as before and with the
// secret of the session's latest welcome, gets the session back on its
// new carrier: the server opens one stream per connection, saying how
// much of the client's data it has read, and the client answers with how
// much of the server's it has; each resends the rest. Past the window the
// session ends as a lost one always did.

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/protocol"
	"github.com/tunnel-dev/tunnel/internal/resume"
)

var (
	// errResumeExpired ends a session whose client did not come back
	// within the resume window.
	errResumeExpired = errors.New("not resumed within resume_window")
	// errAway is what a control message meets while nothing carries
	// the session.
	errAway = errors.New("the client is away")
	// errEnded ends the connections of a session ended on purpose while
	// its client was away (a takeover, a shutdown).
	errEnded = errors.New("session ended")
)

// resumable is a session's resumption state. Lock order: its mu before
// the session's.
type resumable struct {
	window time.Duration
	hold   int // new public connections held per tunnel while away
	kept   int // what each connection may keep unacknowledged

	mu sync.Mutex
	// secrets are the SHA-256 of the secret in the latest welcome and of
	// the one before: a welcome lost with its carrier leaves the client
	// with the older one.
	secrets [2][sha256.Size]byte
	conns   map[uint64]*heldConn
	away    *time.Timer // while away: ends the session when it fires
	since   time.Time   // when it went away
	held    map[string]int
	reset   map[string]int // per tunnel: new connections past hold while away
}

// heldConn is one public connection of a resumable session.
type heldConn struct {
	hdr protocol.StreamHeader
	rc  *resume.Conn
	// on is the carrier the connection is on or being resumed on; nil
	// while away.
	on *carrier
	// fresh: taken while the client was away and not yet handed to it
	// (counted in held).
	fresh bool
}

// offerResume sets up resumption when both sides want it and returns
// what the welcome says of it (nil: off).
func (ss *session) offerResume(hello *protocol.Hello) *protocol.ResumeGrant {
	w := time.Duration(hello.ResumeWindow) * time.Millisecond
	w = min(w, ss.srv.config().ResumeWindow.D())
	if w <= 0 || hello.ResumeWindow <= 0 {
		return nil
	}
	ss.res = &resumable{window: w, hold: ss.srv.config().ResumeHold, kept: int(ss.srv.config().Window.StreamMax), conns: map[uint64]*heldConn{},
		held: map[string]int{}, reset: map[string]int{}}
	return ss.res.grant()
}

// grant makes a new secret and returns it with the window.
func (r *resumable) grant() *protocol.ResumeGrant {
	var b [32]byte
	_, _ = rand.Read(b[:])
	secret := base64.RawURLEncoding.EncodeToString(b[:])
	r.mu.Lock()
	r.secrets[1], r.secrets[0] = r.secrets[0], sha256.Sum256([]byte(secret))
	r.mu.Unlock()
	return &protocol.ResumeGrant{Window: r.window.Milliseconds(), Secret: secret}
}

// check reports whether secret is one the session gave out and still
// honours.
func (r *resumable) check(secret string) bool {
	h := sha256.Sum256([]byte(secret))
	r.mu.Lock()
	defer r.mu.Unlock()
	ok := 0
	for _, s := range r.secrets {
		if s != ([sha256.Size]byte{}) {
			ok |= subtle.ConstantTimeCompare(h[:], s[:])
		}
	}
	return ok == 1
}

// resumeSession puts the session a hello asks to resume on car. It
// returns nil, nil when there is no such session to resume (it ended, or
// the server restarted): the caller starts a new one, and the client,
// told so by a welcome that did not resume, resets what it held. A
// wrong secret is refused, and the session stays held for its client.
func (s *Server) resumeSession(id *identity, hello *protocol.Hello, car *carrier, log *slog.Logger) (*session, error) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	req := hello.Resume
	s.mu.Lock()
	ss := s.sessions[id.name]
	s.mu.Unlock()
	if ss == nil || ss.res == nil || ss.id != req.Session {
		log.Info("no such session to resume (it ended, or tunneld restarted): starting a new one", "resume_session", clip(req.Session))
		return nil, nil
	}
	if !ss.res.check(req.Secret) {
		return nil, &authError{code: protocol.CodeResume, msg: fmt.Sprintf(
			"resume of session %s refused: wrong resume secret (only the client that session welcomed can resume it); the session stays held for its client", ss.id)}
	}
	ss.mu.Lock()
	if ss.closed {
		ss.mu.Unlock()
		log.Info("the session to resume has just ended: starting a new one", "resume_session", ss.id)
		return nil, nil
	}
	old := ss.car
	ss.car, ss.lastRemote = car, car.remote
	ss.mu.Unlock()
	away := ss.res.stopAway()
	if old != nil {
		// The client gave up on it first; its end is no news.
		old.ys.Close()
	}
	err := car.send(protocol.Control{Type: protocol.TypeWelcome, Welcome: fitWelcome(&protocol.Welcome{
		Session: ss.id, Tunnels: ss.results(), Client: authenticatedAs(id), Resume: ss.res.grant(), Resumed: true})},
		s.opts.HandshakeTimeout)
	// Watched even when the welcome failed: its end sends the session
	// away again.
	ss.watchControl(car)
	if err != nil {
		ss.log.Warn("session lost while resuming", "err", err)
		return ss, nil
	}
	n, fresh := ss.res.resumeAll(ss, car)
	// ss.log names the first carrier's address as remote.
	args := []any{"connections", n - fresh, "held_new", fresh, "remote_now", car.remote}
	if away > 0 {
		args = append(args, "away", away.Round(time.Millisecond))
	} else {
		args = append(args, "away", "not noticed")
	}
	if reset := ss.res.takeReset(); reset > 0 {
		args = append(args, "reset_past_resume_hold", reset)
	}
	s.met.resumed.Inc()
	ss.log.Info("session resumed", args...)
	return ss, nil
}

// results is the state of the session's tunnels, for a resume's welcome.
func (ss *session) results() []protocol.TunnelResult {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]protocol.TunnelResult, 0, len(ss.listeners)+len(ss.pending))
	for _, pl := range ss.listeners {
		out = append(out, protocol.TunnelResult{Name: pl.name, OK: true,
			Public: pl.public, URLs: pl.urls()})
	}
	for name, p := range ss.pending {
		out = append(out, protocol.TunnelResult{Name: name, Code: p.code, Error: p.err, Pending: true})
	}
	return out
}

// goAway leaves the session away after its carrier car was lost, and
// reports whether it did; false means the session is over. A carrier
// already replaced by a resume changes nothing.
func (ss *session) goAway(car *carrier, lost error) bool {
	if ss.res == nil {
		return false
	}
	ss.mu.Lock()
	if ss.car != car {
		ss.mu.Unlock()
		return true
	}
	if ss.closed || ss.srvCtx.Err() != nil {
		ss.mu.Unlock()
		return false
	}
	ss.car = nil
	ss.mu.Unlock()
	r := ss.res
	r.mu.Lock()
	r.since = time.Now()
	r.away = time.AfterFunc(r.window, ss.awayExpired)
	// Under the lock, so a resume that follows at once finds every
	// connection detached (its offsets final) before it attaches one.
	for _, hc := range r.conns {
		hc.on = nil
		hc.rc.Detach()
	}
	n := len(r.conns)
	r.mu.Unlock()
	ss.log.Warn("session lost; holding it for the client to resume", "cause", car.ys.Cause(lost), "err", lost,
		"connections", n, "resume_window", r.window)
	return true
}

// awayExpired ends a session still away after its window.
func (ss *session) awayExpired() {
	ss.mu.Lock()
	away := ss.car == nil && !ss.closed
	ss.mu.Unlock()
	if !away {
		return
	}
	r := ss.res
	r.mu.Lock()
	n := len(r.conns)
	r.mu.Unlock()
	ss.log.Warn("client did not resume within resume_window: resetting its connections and releasing its ports",
		"connections", n, "reset_past_resume_hold", r.takeReset(), "resume_window", r.window)
	ss.end(EndResumeExpired, "", false)
}

// stopAway stops the away timer and returns how long the session was
// away (0 if it was not).
func (r *resumable) stopAway() time.Duration {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.away == nil {
		return 0
	}
	r.away.Stop()
	r.away = nil
	return time.Since(r.since)
}

// endAll ends what the session still holds: connections whose joins
// ended but whose peer had not read everything yet.
func (r *resumable) endAll() {
	if r == nil {
		return
	}
	r.stopAway()
	r.mu.Lock()
	conns := r.conns
	r.conns = map[uint64]*heldConn{}
	r.mu.Unlock()
	for _, hc := range conns {
		_ = hc.rc.Abort()
	}
}

// holdNew takes a public connection that arrives while the client is
// away, unless its tunnel already holds as many as it may.
func (r *resumable) holdNew(h protocol.StreamHeader) *heldConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.held[h.Tunnel] >= r.hold {
		r.reset[h.Tunnel]++
		return nil
	}
	r.held[h.Tunnel]++
	rc := resume.Detached(r.window)
	rc.LimitKept(r.kept)
	return &heldConn{hdr: h, rc: rc, fresh: true}
}

// newConn makes a resumable connection over st, the first stream of a
// public connection.
func (r *resumable) newConn(h protocol.StreamHeader, st *mux.Stream, car *carrier) *heldConn {
	rc := resume.New(st, r.window)
	// A client that never acknowledges stalls its connections instead of
	// growing tunneld: at most a stream window of ours each.
	rc.LimitKept(r.kept)
	return &heldConn{hdr: h, rc: rc, on: car}
}

// refusedWhileAway logs the first public connection of a tunnel reset at
// resume_hold while away; the rest are counted in the next resume's (or
// the expiry's) line.
func (r *resumable) refusedWhileAway(log *slog.Logger, tunnel string) {
	r.mu.Lock()
	first := r.reset[tunnel] == 1
	r.mu.Unlock()
	if first {
		log.Warn("public connection reset: the client is away and the tunnel holds resume_hold new connections already",
			"resume_hold", r.hold, "hint", "raise resume_hold in tunneld.toml to hold more")
	}
}

// takeReset returns and clears the count of connections reset at
// resume_hold.
func (r *resumable) takeReset() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for t, k := range r.reset {
		n += k
		delete(r.reset, t)
	}
	return n
}

// track records hc as the session's; if the session moved to another
// carrier since hc was opened (or held), hc is resumed on that one.
func (r *resumable) track(ss *session, hc *heldConn) {
	r.mu.Lock()
	r.conns[hc.hdr.Conn] = hc
	cur := ss.carrier()
	move := cur != nil && hc.on != cur
	if move {
		hc.on = cur
	}
	r.mu.Unlock()
	if move {
		ss.parts.Go(func() { ss.resumeOne(cur, hc) })
	}
}

// forget drops hc, which never started.
func (r *resumable) forget(hc *heldConn) {
	if r == nil || hc == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropLocked(hc)
}

func (r *resumable) dropLocked(hc *heldConn) {
	if r.conns[hc.hdr.Conn] == hc {
		delete(r.conns, hc.hdr.Conn)
	}
	r.unholdLocked(hc)
}

// unholdLocked stops counting hc against its tunnel's resume_hold: it
// was handed to the client, or it is gone.
func (r *resumable) unholdLocked(hc *heldConn) {
	if hc.fresh {
		hc.fresh = false
		r.held[hc.hdr.Tunnel]--
	}
}

// joinEnded drops hc once its join has ended and the client has read all
// it was sent: until then, a resume still resends it the tail.
func (r *resumable) joinEnded(ss *session, hc *heldConn) {
	if r == nil || hc == nil {
		return
	}
	drop := func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.dropLocked(hc)
	}
	if hc.rc.Err() != nil || !ss.parts.Go(func() {
		select {
		case <-hc.rc.Done():
		case <-ss.ctx.Done():
		}
		drop()
	}) {
		drop()
	}
}

// resumeAll resumes on car every connection not already on it, each on
// its own goroutine, and returns how many, and how many of them were
// taken while away.
func (r *resumable) resumeAll(ss *session, car *carrier) (n, fresh int) {
	r.mu.Lock()
	var todo []*heldConn
	for _, hc := range r.conns {
		if hc.on != car && hc.rc.Err() == nil {
			hc.on = car
			todo = append(todo, hc)
			if hc.fresh {
				fresh++
			}
		}
	}
	r.mu.Unlock()
	for _, hc := range todo {
		ss.parts.Go(func() { ss.resumeOne(car, hc) })
	}
	return len(todo), fresh
}

// resumeOne carries hc on from car: a stream saying how much of the
// client's data the server has read, the client's answer, and each side
// resends the rest. A carrier lost meanwhile leaves hc for the next
// resume; a client that cannot carry it on (it lost it, or it answers
// nonsense) resets it.
func (ss *session) resumeOne(car *carrier, hc *heldConn) {
	log := ss.log.With("tunnel", hc.hdr.Tunnel, "conn", hc.hdr.Conn)
	h := hc.hdr
	h.Resumable, h.Resume, h.Offset = true, true, hc.rc.Detach()
	hdr, err := protocol.AppendFrame(nil, h)
	if err != nil {
		log.Error("connection not resumed: stream header", "err", err)
		_ = hc.rc.Abort()
		return
	}
	st, err := car.ys.OpenWith(hdr)
	if err != nil {
		return // this carrier is lost too: the next one resumes hc
	}
	_ = st.SetReadDeadline(time.Now().Add(ss.srv.opts.HandshakeTimeout))
	var rep protocol.ResumeReply
	if err := protocol.ReadFrame(st, &rep); err != nil {
		_ = st.Abort()
		if !car.ys.IsClosed() {
			log.Warn("connection not resumed: the client did not answer; resetting it", "err", err)
			_ = hc.rc.Abort()
		}
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	if rep.Error != "" {
		log.Warn("connection not resumed: the client no longer has it; resetting it", "err", clip(rep.Error))
		_ = st.Abort()
		_ = hc.rc.Abort()
		return
	}
	if err := hc.rc.Attach(st, rep.Offset); err != nil {
		_ = st.Abort()
		if errors.Is(err, resume.ErrOffset) {
			log.Warn("connection not resumed: the client's offset is impossible; resetting it", "err", err)
			_ = hc.rc.Abort()
		}
		return
	}
	r := ss.res
	r.mu.Lock()
	r.unholdLocked(hc)
	r.mu.Unlock()
	log.Debug("connection resumed", "server_read", h.Offset, "client_read", rep.Offset)
}
