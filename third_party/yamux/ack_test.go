package yamux

import (
	"crypto/sha256"
	"encoding/binary"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A reader that acknowledges: through a slow reader, a parked sink that
// takes everything and one that takes part, the writer's unacknowledged
// bytes never exceed the window (what a resuming sender must keep), every
// byte arrives intact, and once all is read and FlushAcks runs, Acked
// equals Sent.
func TestAcksFollowWhatTheReaderConsumed(t *testing.T) {
	const window = 512 << 10
	for _, mode := range []string{"read", "sink", "partial sink"} {
		t.Run(mode, func(t *testing.T) {
			cli, srv := tcpSessions(t, window)
			a, sa := openPair(t, cli, srv, "x")
			sa.EnableAcks()
			var worst atomic.Uint64
			a.OnAck(func(acked uint64) {
				if acked > a.Sent() {
					t.Errorf("acked %d of %d sent", acked, a.Sent())
				}
			})
			data := make([]byte, 8<<20)
			for i := range data {
				data[i] = byte(i*31 + i>>11)
			}
			sent := make(chan error, 1)
			go func() {
				for off := 0; off < len(data); off += 100 << 10 {
					end := imin(off+100<<10, len(data))
					if _, err := a.Write(data[off:end]); err != nil {
						sent <- err
						return
					}
					if d := a.Sent() - a.Acked(); d > worst.Load() {
						worst.Store(d)
					}
				}
				sent <- nil
			}()

			h := sha256.New() // of everything read, openPair's "x" first
			total := len(data) + 1
			var mu sync.Mutex
			got := 0
			all := make(chan struct{})
			add := func(p []byte) { // under mu
				h.Write(p)
				got += len(p)
				if got == total {
					close(all)
				}
			}
			take := func(p []byte) (int, error) {
				mu.Lock()
				defer mu.Unlock()
				n := len(p)
				if mode == "partial sink" && got%3 == 0 {
					n /= 2
				}
				add(p[:n])
				return n, nil
			}
			buf := make([]byte, 64<<10)
			read := func() {
				_ = sa.SetReadDeadline(time.Now().Add(10 * time.Second))
				n, err := sa.Read(buf)
				if err != nil {
					t.Errorf("read after %d of %d bytes (sent %d, acked %d): %v", got, total, a.Sent(), a.Acked(), err)
					return
				}
				mu.Lock()
				add(buf[:n])
				mu.Unlock()
			}
		loop:
			for {
				select {
				case <-all:
					break loop
				default:
				}
				if mode == "read" {
					read()
					if t.Failed() {
						t.FailNow()
					}
					time.Sleep(time.Duration(len(buf)%7) * 100 * time.Microsecond) // a reader that lags
					continue
				}
				woke := make(chan struct{})
				sa.NotifyReadableOrDeliver(func() { close(woke) }, take)
				select {
				case <-woke:
					for sa.Readable() && !t.Failed() {
						read()
					}
				case <-all:
				case <-time.After(10 * time.Second):
					t.Fatal("data stopped arriving")
				}
				if t.Failed() {
					t.FailNow()
				}
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			want := sha256.Sum256(append([]byte("x"), data...))
			if string(h.Sum(nil)) != string(want[:]) {
				t.Fatal("the bytes read differ from the bytes written")
			}
			if w := worst.Load(); w > window {
				t.Fatalf("%d bytes unacknowledged at worst, more than the %d-byte window", w, window)
			}
			srv.FlushAcks()
			deadline := time.Now().Add(5 * time.Second)
			for a.Acked() != a.Sent() {
				if time.Now().After(deadline) {
					t.Fatalf("acked %d of %d after everything was read and flushed", a.Acked(), a.Sent())
				}
				time.Sleep(time.Millisecond)
			}
			if a.Sent() != uint64(len(data)+1) {
				t.Fatalf("sent %d, wrote %d", a.Sent(), len(data)+1)
			}
			t.Logf("at most %d KiB unacknowledged with a %d KiB window", worst.Load()>>10, window>>10)
		})
	}
}

// On the wire: a stream that does not acknowledge sends plain window
// updates, as upstream does (an unpatched peer ends the session on a frame
// type it does not know); one that does sends each update with its
// acknowledgment right before it, and FlushAcks acknowledges what no
// update covered. The raw peer's own acknowledgments are checked too: one
// beyond what was sent is ignored, one for an unknown stream is harmless.
func TestAcksOnTheWire(t *testing.T) {
	srv, raw := rawServer(t, func(c *Config) { c.MaxStreamWindowSize = 256 << 10 })
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	frame := func(typ uint8, flags uint16, id, length uint32, body []byte) {
		t.Helper()
		hdr := header(make([]byte, headerSize))
		hdr.encode(typ, flags, id, length)
		if _, err := raw.Write(append(hdr, body...)); err != nil {
			t.Fatal(err)
		}
	}
	next := func() (typ uint8, flags uint16, id, length uint32) {
		t.Helper()
		var h [headerSize]byte
		if _, err := io.ReadFull(raw, h[:]); err != nil {
			t.Fatal(err)
		}
		return h[1], binary.BigEndian.Uint16(h[2:4]), binary.BigEndian.Uint32(h[4:8]), binary.BigEndian.Uint32(h[8:12])
	}
	accept := func(id uint32) *Stream {
		t.Helper()
		frame(typeWindowUpdate, flagSYN, id, 0, nil)
		st, err := srv.AcceptStream()
		if err != nil {
			t.Fatal(err)
		}
		// The ACK, and the window the server grows the stream to.
		for {
			typ, flags, sid, _ := next()
			if typ == typeWindowUpdate && sid == id && flags&flagACK != 0 {
				break
			}
		}
		return st
	}
	// 200 KiB read by a reader that does not acknowledge: one plain window
	// update, nothing after it.
	plain := accept(1)
	body := make([]byte, 200<<10)
	frame(typeData, 0, 1, uint32(len(body)), body)
	if _, err := io.ReadFull(plain, body); err != nil {
		t.Fatal(err)
	}
	typ, _, id, delta := next()
	if typ != typeWindowUpdate || id != 1 || delta != 200<<10 {
		t.Fatalf("got type %d stream %d length %d, want a window update of 200 KiB on stream 1", typ, id, delta)
	}
	srv.FlushAcks()
	srv.SendPing() // anything queued after the update goes before the ping
	if typ, _, _, _ := next(); typ != typePing {
		t.Fatalf("a frame of type %d from a stream that does not acknowledge", typ)
	}

	// The same with acknowledgments: the update, then its acknowledgment.
	st := accept(3)
	st.EnableAcks()
	frame(typeData, 0, 3, uint32(len(body)), body)
	if _, err := io.ReadFull(st, body); err != nil {
		t.Fatal(err)
	}
	if typ, _, id, n := next(); typ != typeAck || id != 3 || n != 200<<10 {
		t.Fatalf("got type %d stream %d length %d, want an acknowledgment of 200 KiB on stream 3", typ, id, n)
	}
	if typ, _, id, delta := next(); typ != typeWindowUpdate || id != 3 || delta != 200<<10 {
		t.Fatalf("got type %d stream %d length %d, want a window update of 200 KiB on stream 3", typ, id, delta)
	}
	// 1000 bytes more: no update is due; FlushAcks acknowledges them, once.
	frame(typeData, 0, 3, 1000, body[:1000])
	if _, err := io.ReadFull(st, body[:1000]); err != nil {
		t.Fatal(err)
	}
	srv.FlushAcks()
	srv.FlushAcks()
	if typ, _, id, n := next(); typ != typeAck || id != 3 || n != 200<<10+1000 {
		t.Fatalf("got type %d stream %d length %d, want an acknowledgment of %d on stream 3", typ, id, n, 200<<10+1000)
	}
	srv.SendPing()
	if typ, _, _, _ := next(); typ != typePing {
		t.Fatalf("a second acknowledgment (type %d) with nothing new consumed", typ)
	}

	// The raw peer acknowledges: more than was sent is ignored, exactly
	// what was sent counts, an unknown stream is nothing.
	if _, err := st.Write(make([]byte, 5000)); err != nil {
		t.Fatal(err)
	}
	frame(typeAck, 0, 3, 6000, nil)
	frame(typeAck, 0, 99, 6000, nil)
	frame(typeAck, 0, 3, 5000, nil)
	deadline := time.Now().Add(5 * time.Second)
	for st.Acked() != 5000 {
		if st.Acked() > st.Sent() {
			t.Fatalf("acked %d of %d sent", st.Acked(), st.Sent())
		}
		if time.Now().After(deadline) {
			t.Fatalf("acked %d, want 5000", st.Acked())
		}
		time.Sleep(time.Millisecond)
	}
	if srv.IsClosed() {
		t.Fatal("the session ended")
	}
}

// The reader's reading of the peer's FIN is acknowledged as one more
// byte, even when both FINs have crossed and the writer's stream is closed
// by then: the closed stream lingers in its session until that
// acknowledgment, and only while someone waits for it.
func TestAcksCoverTheFINAfterBothCloses(t *testing.T) {
	cli, srv := tcpSessions(t, 512<<10)
	lingering := func() int {
		cli.streamLock.Lock()
		defer cli.streamLock.Unlock()
		return len(cli.lingering)
	}
	a, sa := openPair(t, cli, srv, "x")
	sa.EnableAcks()
	acked := make(chan uint64, 16)
	a.OnAck(func(n uint64) { acked <- n })
	if _, err := a.Write(make([]byte, 100<<10)); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil { // our FIN
		t.Fatal(err)
	}
	if err := sa.Close(); err != nil { // theirs, before they read anything
		t.Fatal(err)
	}
	// Both FINs crossed: the client's stream is closed, and lingers.
	deadline := time.Now().Add(5 * time.Second)
	for lingering() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams lingering, want the closed one", lingering())
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := io.ReadAll(sa); err != nil {
		t.Fatal(err)
	}
	want := uint64(1 + 100<<10 + 1) // "x", the data, the FIN
	if a.Sent() != want {
		t.Fatalf("sent %d, want %d", a.Sent(), want)
	}
	for a.Acked() != want {
		select {
		case <-acked:
		case <-time.After(5 * time.Second):
			t.Fatalf("acked %d of %d after the FIN was read", a.Acked(), want)
		}
	}
	deadline = time.Now().Add(5 * time.Second)
	for lingering() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a fully acknowledged stream still lingers")
		}
		time.Sleep(time.Millisecond)
	}

	// A peer that never reads: the stream lingers until nobody waits.
	b, sb := openPair(t, cli, srv, "y")
	sb.EnableAcks()
	b.OnAck(func(uint64) {})
	b.Close()
	sb.Close()
	deadline = time.Now().Add(5 * time.Second)
	for lingering() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams lingering, want the unread one", lingering())
		}
		time.Sleep(time.Millisecond)
	}
	b.OnAck(nil)
	if n := lingering(); n != 0 {
		t.Fatalf("%d streams lingering after OnAck(nil)", n)
	}
}
