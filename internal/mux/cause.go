package mux

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/hashicorp/yamux"
)

// Cause explains a session error without the session's own knowledge.
func Cause(err error) string {
	switch {
	case err == nil:
		return "closed"
	case errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, os.ErrDeadlineExceeded):
		return "tcp timeout (keepalive or user_timeout)"
	case errors.Is(err, yamux.ErrSessionShutdown), errors.Is(err, net.ErrClosed):
		return "closed locally"
	case errors.Is(err, io.EOF):
		return "closed by peer"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset by peer"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "no route to host"
	}
	return err.Error()
}
