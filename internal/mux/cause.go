package mux

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// Cause names why a session or a connection carried by one ended, for
// logs: the kind of failure, in the words an operator searches for. It is
// the one place errors become such words; a Session adds what only it
// knows (Session.Cause). Errors are told apart by errors.Is, never by
// their text.
func Cause(err error) string { return classify(err).text }

// Kinds of end, for metrics labels: a small fixed set (Kinds lists it).
const (
	KindClosed           = "closed"
	KindSessionLost      = "session_lost"
	KindTCPTimeout       = "tcp_timeout"
	KindKeepAliveTimeout = "keepalive_timeout"
	KindUserTimeout      = "user_timeout"
	KindHeartbeatTimeout = "heartbeat_timeout"
	KindTimeout          = "timeout"
	KindClosedLocally    = "closed_locally"
	KindPeerClosed       = "peer_closed"
	KindReset            = "reset"
	KindUnreachable      = "unreachable"
	KindError            = "error"
)

// Kinds lists every kind CauseKind and Session.CauseKind give.
var Kinds = []string{KindClosed, KindSessionLost, KindTCPTimeout, KindKeepAliveTimeout, KindUserTimeout, KindHeartbeatTimeout,
	KindTimeout, KindClosedLocally, KindPeerClosed, KindReset, KindUnreachable, KindError}

// CauseKind is Cause's kind.
func CauseKind(err error) string { return classify(err).kind }

// cause is an end's kind and its words.
type cause struct{ kind, text string }

func classify(err error) cause {
	switch {
	case err == nil:
		return cause{KindClosed, "closed"}
	case errors.Is(err, ErrSessionLost):
		return cause{KindSessionLost, "session lost"}
	case errors.Is(err, syscall.ETIMEDOUT):
		return cause{KindTCPTimeout, "tcp timeout: the peer stopped answering (keepalive or user_timeout)"}
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return cause{KindTimeout, "timed out"}
	case errors.Is(err, net.ErrClosed):
		return cause{KindClosedLocally, "closed locally"}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return cause{KindPeerClosed, "closed by peer"}
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return cause{KindReset, "reset by peer"}
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return cause{KindUnreachable, "peer unreachable"}
	}
	return cause{KindError, "error"}
}
