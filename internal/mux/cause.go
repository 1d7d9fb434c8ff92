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
func Cause(err error) string {
	switch {
	case err == nil:
		return "closed"
	case errors.Is(err, ErrSessionLost):
		return "session lost"
	case errors.Is(err, syscall.ETIMEDOUT):
		return "tcp timeout: the peer stopped answering (keepalive or user_timeout)"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	case errors.Is(err, net.ErrClosed):
		return "closed locally"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed by peer"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset by peer"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "peer unreachable"
	}
	return "error"
}
