package mux

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/nettest"
)

// The net.Conn wrappers of this package keep net.Conn's contract, as
// golang.org/x/net/nettest checks it: data in order, deadlines (past,
// present, future) failing calls with a timeout, Close unblocking pending
// calls, and every method safe to call concurrently (under -race).
func TestConnConformance(t *testing.T) {
	t.Run("Stream", func(t *testing.T) {
		nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
			o := testOptions()
			o.Logger = nil
			cc, sc, err := dialPair(o, o)
			if err != nil {
				return nil, nil, nil, err
			}
			cli, err := Client(cc, o)
			if err != nil {
				return nil, nil, nil, err
			}
			srv, err := Server(sc, o)
			if err != nil {
				cli.Close()
				return nil, nil, nil, err
			}
			a, b, err := streamPair(cli, srv)
			if err != nil {
				cli.Close()
				srv.Close()
				return nil, nil, nil, err
			}
			return a, b, func() { cli.Close(); srv.Close() }, nil
		})
	})
	t.Run("watchConn", func(t *testing.T) {
		nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
			o := testOptions()
			cc, sc, err := dialPair(o, o)
			if err != nil {
				return nil, nil, nil, err
			}
			if _, ok := cc.(*watchConn); !ok {
				return nil, nil, nil, errors.New("Dial did not return a watchConn")
			}
			return cc, sc, func() { cc.Close(); sc.Close() }, nil
		})
	})
	t.Run("tlsConn", func(t *testing.T) {
		srvTLS, cliTLS := tlsConfigs(t)
		nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
			so, co := testOptions(), testOptions()
			so.TLS, co.TLS = srvTLS, cliTLS
			cc, sc, err := dialPair(so, co)
			if err != nil {
				return nil, nil, nil, err
			}
			if _, ok := cc.(*tlsConn); !ok {
				return nil, nil, nil, errors.New("Dial did not return a tlsConn")
			}
			return cc, sc, func() { cc.Close(); sc.Close() }, nil
		})
	})
}

// streamPair opens a stream on cli and returns it with srv's end.
func streamPair(cli, srv *Session) (*Stream, *Stream, error) {
	a, err := cli.OpenWith([]byte{0})
	if err != nil {
		return nil, nil, err
	}
	b, err := srv.Accept()
	if err != nil {
		return nil, nil, err
	}
	if _, err := io.ReadFull(b, make([]byte, 1)); err != nil {
		return nil, nil, err
	}
	return a, b, nil
}

// Abort reaches the peer as a reset: its read fails with ECONNRESET after
// the data it had, and so does its next write; the session lives on.
func TestStreamAbortReachesPeer(t *testing.T) {
	cli, srv, _, _ := pair(t, testOptions())
	a, sa := openPair(t, cli, srv, "partial")
	buf := make([]byte, 7)
	if _, err := io.ReadFull(sa, buf); err != nil {
		t.Fatal(err)
	}
	if err := a.Abort(); err != nil {
		t.Fatal(err)
	}
	_ = sa.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := sa.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("peer read after abort: %v, want connection reset", err)
	}
	if _, err := sa.Write([]byte("late")); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("peer write after abort: %v, want connection reset", err)
	}
	if cli.IsClosed() || srv.IsClosed() {
		t.Fatal("a stream abort closed the session")
	}
}

// Close is TCP's close: the peer reads everything written and then EOF;
// calls here fail with net.ErrClosed; data the peer sends afterwards, which
// nobody will read, is answered with a reset; unread data at Close makes
// the close itself a reset.
func TestStreamCloseIsTCPClose(t *testing.T) {
	cli, srv, _, _ := pair(t, testOptions())

	t.Run("peer still sending", func(t *testing.T) {
		a, sa := openPair(t, cli, srv, "x")
		if _, err := io.ReadFull(sa, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		if _, err := sa.Write([]byte("last words")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(a, make([]byte, len("last words"))); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Write([]byte("bye")); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("read after close: %v, want net.ErrClosed", err)
		}
		if _, err := a.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("write after close: %v, want net.ErrClosed", err)
		}
		if err := a.SetDeadline(time.Now()); !errors.Is(err, net.ErrClosed) {
			t.Errorf("deadline after close: %v, want net.ErrClosed", err)
		}
		got, err := io.ReadAll(sa)
		if err != nil || string(got) != "bye" {
			t.Fatalf("peer read %q, %v; want what was written, then EOF", got, err)
		}
		// The peer's data now has nobody to read it: a reset answers.
		_ = sa.SetWriteDeadline(time.Now().Add(5 * time.Second))
		var werr error
		for werr == nil {
			_, werr = sa.Write([]byte("anyone?"))
		}
		if !errors.Is(werr, syscall.ECONNRESET) {
			t.Fatalf("peer writing to a closed stream: %v, want connection reset", werr)
		}
	})

	t.Run("unread data", func(t *testing.T) {
		a, sa := openPair(t, cli, srv, "x")
		if _, err := io.ReadFull(sa, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		if _, err := sa.Write([]byte("unread")); err != nil {
			t.Fatal(err)
		}
		waitReadable(t, a)
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		_ = sa.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := sa.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("peer read after a close with unread data: %v, want connection reset", err)
		}
	})

	t.Run("both done", func(t *testing.T) {
		a, sa := openPair(t, cli, srv, "x")
		if _, err := io.ReadFull(sa, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		if err := sa.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(a); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		_ = sa.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := sa.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("peer read after both closed: %v, want EOF", err)
		}
	})

	// A deadline in the past fails a call even when it would not wait.
	t.Run("past deadline", func(t *testing.T) {
		a, sa := openPair(t, cli, srv, "x")
		waitReadable(t, sa)
		_ = sa.SetDeadline(time.Unix(1, 0))
		if n, err := sa.Read(make([]byte, 1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("read with data and a past deadline: %d, %v", n, err)
		}
		if n, err := a.Write(nil); n != 0 || err != nil {
			t.Errorf("empty write: %d, %v", n, err)
		}
		if n, err := sa.Write([]byte("x")); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("write with window and a past deadline: %d, %v", n, err)
		}
	})
}

// waitReadable waits until s has something to read.
func waitReadable(t *testing.T, s *Stream) {
	t.Helper()
	ready := make(chan struct{})
	s.NotifyReadable(func() { close(ready) })
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("nothing arrived")
	}
}
