package server

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/tunnel-dev/tunnel/internal/protocol"
	"github.com/tunnel-dev/tunnel/internal/proxy"
)

// dataConn is the tunnel side of a public connection: a stream, or a
// resumable connection over successive streams (package resume).
type dataConn interface {
	net.Conn
	CloseWrite() error
	Abort() error
	Readable() bool
	NotifyReadable(f func())
	WaitReadableFor(d time.Duration) bool
	NotifyReadableOrDeliver(f func(), deliver func([]byte) (int, error))
}

// dialResult is the tunnel side of a public connection. Its first Read
// consumes the client's dial result: on failure the Read fails, so the
// join resets the public connection instead of passing a clean EOF.
type dialResult struct {
	dataConn
	checked bool
	// failed, when set, hears why the client could not reach its
	// service before the join resets the public connection (an http
	// visitor gets a page instead).
	failed func(msg string)
}

type dialError struct{ msg string }

func (e *dialError) Error() string { return "local service unreachable: " + e.msg }

func (d *dialResult) Read(p []byte) (int, error) {
	if !d.checked {
		var b [1]byte
		if _, err := io.ReadFull(d.dataConn, b[:]); err != nil {
			return 0, fmt.Errorf("dial result: %w", err)
		}
		d.checked = true
		if b[0] != protocol.DialOK {
			de := &dialError{msg: "(no reason given)"}
			var e protocol.Error
			if err := protocol.ReadFrame(d.dataConn, &e); err == nil {
				de.msg = e.Message
			}
			if d.failed != nil {
				d.failed(de.msg)
			}
			return 0, de
		}
		// Most services wait for the client to speak first. Reading on
		// would hold this direction's goroutine and copy buffer until
		// the service's first byte; give both back so the direction
		// parks like any idle one (package proxy reads again only once
		// the stream is readable).
		if !d.dataConn.Readable() {
			return 0, nil
		}
	}
	return d.dataConn.Read(p)
}

// WriteKeep hands the buffer to a resumable connection, which keeps it
// instead of copying; a plain stream writes it and gives it back.
func (d *dialResult) WriteKeep(b *[]byte, n int, give func(*[]byte)) (int, error) {
	if k, ok := d.dataConn.(proxy.Keeper); ok {
		return k.WriteKeep(b, n, give)
	}
	defer give(b)
	return d.dataConn.Write((*b)[:n])
}

// NotifyReadableOrDeliver delivers only once the dial result is read: the
// byte that says whether the client reached its service is not for the
// public peer.
func (d *dialResult) NotifyReadableOrDeliver(f func(), deliver func([]byte) (int, error)) {
	if !d.checked {
		d.dataConn.NotifyReadable(f)
		return
	}
	d.dataConn.NotifyReadableOrDeliver(f, deliver)
}
