package client

// Resumption, the client's half (the server's is in package server's
// resume.go). A session welcomed with a resume grant is a lineage: its
// connections are joined under the lineage's context, not the session's,
// and each keeps what it wrote until the server's reader acknowledges it
// (package resume). When the session is lost, the lineage keeps them,
// detached, for the resume window, and the next hello asks to resume the
// session with its latest secret. A welcome that resumed it is followed
// by one stream per connection the server still holds; one that did not
// (the server ended the session, or restarted) ends the lineage, and its
// connections are reset as without resumption.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/protocol"
	"github.com/tunnel-dev/tunnel/internal/resume"
)

// resumeRetryMax bounds the wait between attempts while a lost session
// can still be resumed: its connections wait for it.
const resumeRetryMax = time.Second

var (
	errResumeRefused  = errors.New("the server refused to resume the session")
	errNotResumed     = errors.New("the server could not resume the session (it ended it, or restarted)")
	errClosedByServer = errors.New("the server closed the session")
	errResumeExpired  = errors.New("not resumed within resume_window")
)

// lineage is a resumable session's state across its carriers.
type lineage struct {
	session, secret string // what the next hello presents
	window          time.Duration
	log             *slog.Logger
	// ctx ends with the lineage; every dial and join of its connections
	// runs under it.
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu     sync.Mutex
	conns  map[uint64]*resume.Conn
	expire *time.Timer // while away: ends the lineage when it fires
	since  time.Time
	wg     sync.WaitGroup // joins, and connections draining after them
}

// carryOn makes the session c's handshake welcomed part of a lineage, or
// not: it ends a lineage the server did not resume and starts one for a
// session that can be resumed. It returns the session's lineage, nil
// when resumption is off.
func (c *Client) carryOn(ctx context.Context, w *protocol.Welcome, log *slog.Logger) *lineage {
	l := c.line
	if l != nil && !l.alive() {
		c.endLine(errResumeExpired) // its window passed: its connections are gone
		l = nil
	}
	switch {
	case l != nil && w.Resumed:
		away := l.back()
		log.Info("session resumed", "connections", l.count(), "away", away.Round(time.Millisecond))
	case l != nil:
		log.Warn("session not resumed: the server no longer holds it (it ended it, or restarted); its connections are reset",
			"resume_session", l.session, "connections", l.count())
		c.endLine(errNotResumed)
		l = nil
	}
	if w.Resume == nil || w.Resume.Window <= 0 {
		c.endLine(errNotResumed)
		return nil
	}
	if l == nil {
		l = &lineage{conns: map[uint64]*resume.Conn{}}
		l.ctx, l.cancel = context.WithCancelCause(ctx)
		c.line = l
	}
	l.session, l.secret = w.Session, w.Resume.Secret
	l.window = time.Duration(w.Resume.Window) * time.Millisecond
	l.log = log
	return l
}

// endLine ends the lineage, if any: its connections are reset and their
// joins waited for.
func (c *Client) endLine(cause error) {
	l := c.line
	if l == nil {
		return
	}
	c.line = nil
	l.end(cause)
	l.wg.Wait()
}

// end ends the lineage's context with cause and resets its connections;
// later adds fail.
func (l *lineage) end(cause error) {
	l.mu.Lock()
	if l.expire != nil {
		l.expire.Stop()
	}
	conns := l.conns
	l.conns = nil
	l.mu.Unlock()
	l.cancel(cause)
	for _, rc := range conns {
		_ = rc.Abort()
	}
}

// add records a connection and counts its handler in wg (the caller
// calls wg.Done when it has handed the connection on); false once the
// lineage has ended. Under mu, so endLine's wait never starts before
// the count.
func (l *lineage) add(id uint64, rc *resume.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		return false
	}
	l.conns[id] = rc
	l.wg.Add(1)
	return true
}

func (l *lineage) get(id uint64) *resume.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns[id]
}

func (l *lineage) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// closed closes rc, whose join is over, and forgets it once the server
// has read all it was sent: until then a resume still resends the tail.
func (l *lineage) closed(id uint64, rc *resume.Conn) {
	_ = rc.Close()
	drop := func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.conns != nil && l.conns[id] == rc {
			delete(l.conns, id)
		}
	}
	if rc.Err() != nil {
		drop()
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		select {
		case <-rc.Done():
		case <-l.ctx.Done():
		}
		drop()
	}()
}

// goAway detaches every connection after the session was lost and starts
// the window; it returns how many connections wait.
func (l *lineage) goAway() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, rc := range l.conns {
		rc.Detach()
	}
	l.since = time.Now()
	if l.expire == nil {
		l.expire = time.AfterFunc(l.window, func() {
			l.log.Warn("session not resumed within resume_window: resetting its connections", "connections", l.count(),
				"resume_window", l.window)
			l.end(errResumeExpired)
		})
	}
	return len(l.conns)
}

// back stops the window after a resume and returns how long the session
// was away.
func (l *lineage) back() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.expire != nil {
		l.expire.Stop()
		l.expire = nil
	}
	return time.Since(l.since)
}

// alive reports whether the lineage can still be resumed.
func (l *lineage) alive() bool { return l.ctx.Err() == nil }

// resumeStream answers a stream that resumes a connection: with how much
// of the server's data this end has read, and then carries the
// connection on it. It returns true for a connection this client does
// not know at offset 0: one the server took while the client was away,
// which the caller serves as new.
func (ss *session) resumeStream(st *mux.Stream, h *protocol.StreamHeader, log *slog.Logger) bool {
	reply := func(r protocol.ResumeReply) error {
		_ = st.SetWriteDeadline(time.Now().Add(ss.c.options().HandshakeTimeout))
		defer st.SetWriteDeadline(time.Time{})
		return protocol.WriteFrame(st, r)
	}
	l := ss.line
	var rc *resume.Conn
	if l != nil {
		rc = l.get(h.Conn)
	}
	if rc == nil {
		if l != nil && h.Offset == 0 {
			if err := reply(protocol.ResumeReply{}); err != nil {
				_ = st.Abort()
				return false
			}
			h.Resumable = true
			return true
		}
		msg := fmt.Sprintf("connection %d is not held here (it ended, or its resume window passed)", h.Conn)
		log.Info("connection not resumed: not held here", "server_read", h.Offset)
		_ = reply(protocol.ResumeReply{Error: msg})
		_ = st.CloseWrite()
		return false
	}
	off := rc.Detach()
	if err := reply(protocol.ResumeReply{Offset: off}); err != nil {
		_ = st.Abort()
		return false // the session is lost again: the next one resumes rc
	}
	if err := rc.Attach(st, h.Offset); err != nil {
		_ = st.Abort()
		if errors.Is(err, resume.ErrOffset) {
			log.Warn("connection not resumed: the server's offset is impossible; resetting it", "err", err)
			_ = rc.Abort()
		}
		return false
	}
	log.Debug("connection resumed", "server_read", h.Offset, "client_read", off)
	return false
}
