package yamux

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

var errTestWrite = errors.New("test: the socket failed")

// failingConn is a net.Conn whose writes fail once fail is set.
type failingConn struct {
	net.Conn
	fail atomic.Bool
}

func (c *failingConn) Write(p []byte) (int, error) {
	if c.fail.Load() {
		return 0, errTestWrite
	}
	return c.Conn.Write(p)
}

// A write that fails because the session's socket failed under it says
// so: errors.Is(err, ErrSessionShutdown), with the socket's error kept.
// Upstream hands the writer the bare socket error, which a caller cannot
// tell from a failure of its own. Many writers at once, so frames go out
// both directly and through the send loop.
func TestWriteSeesSessionLossOnEveryPath(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.LogOutput = testLog{t}
	fc := &failingConn{Conn: c1}
	client, err := Client(fc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(c2, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	go func() {
		for {
			st, err := server.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 64<<10)
				for {
					if _, err := st.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	const writers = 32
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	var started sync.WaitGroup
	started.Add(writers)
	for i := 0; i < writers; i++ {
		st, err := client.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1024)
			once := false
			for {
				_, err := st.Write(buf)
				if !once {
					once = true
					started.Done()
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	started.Wait()
	fc.fail.Store(true)
	wg.Wait()
	close(errs)
	sawCause := false
	for err := range errs {
		if !errors.Is(err, ErrSessionShutdown) {
			t.Fatalf("write on a failed session returned %v, not ErrSessionShutdown", err)
		}
		sawCause = sawCause || errors.Is(err, errTestWrite)
	}
	if !sawCause {
		t.Fatal("no writer was told the socket's own error")
	}
}
