package yamux

// Tests of the local read-hook patch (NotifyReadable, see PATCHES.md): its
// contract is that each installed hook is called at most once, and only
// when a Read would not wait. Package proxy relies on both: a call on an
// idle stream starts a copier that has nothing to copy, and a second call of
// one hook would start two copiers on one socket.

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestNotifyReadableStress races data, ends and sink deliveries against the
// install of each next hook: a reader parks on a hook after every read and
// reads only when the hook fires, as package proxy does. Every call must
// find the stream readable and no hook may run twice; the bytes must arrive
// whole and in order.
func TestNotifyReadableStress(t *testing.T) {
	const (
		streams = 16
		perSend = 64 << 10 // bytes each stream carries
	)
	rounds := 4
	if testing.Short() {
		rounds = 1
	}
	for round := 0; round < rounds; round++ {
		client, server := tcpSessions(t, testWindow)
		var wg sync.WaitGroup
		errs := make(chan error, 2*streams)
		for i := 0; i < streams; i++ {
			cs, err := client.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			// The stream reaches the server with its first frame.
			if _, err := cs.Write([]byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
			ss, err := server.AcceptStream()
			if err != nil {
				t.Fatal(err)
			}
			data := make([]byte, perSend)
			_, _ = rand.Read(data)
			want := sha256.Sum256(append([]byte{byte(i)}, data...))
			wg.Add(2)
			go func() {
				defer wg.Done()
				errs <- sendJittered(cs, data)
			}()
			go func() {
				defer wg.Done()
				errs <- readOnHooks(ss, want, round%2 == 1)
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
}

// sendJittered writes data in small random pieces with random pauses, so
// frames land at every point of the reader's park-read-park cycle, then
// closes the stream.
func sendJittered(s *Stream, data []byte) error {
	for len(data) > 0 {
		n := 1 + mrand.IntN(512)
		if n > len(data) {
			n = len(data)
		}
		if _, err := s.Write(data[:n]); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		data = data[n:]
		switch mrand.IntN(8) {
		case 0:
			time.Sleep(time.Duration(mrand.IntN(200)) * time.Microsecond)
		case 1, 2:
			runtime.Gosched()
		}
	}
	return s.Close()
}

// readOnHooks reads s only when a hook says it is readable, until EOF, and
// checks the hook contract and the bytes. With sink set, some hooks are
// installed with a sink that takes all, part or none of what it is given.
func readOnHooks(s *Stream, want [sha256.Size]byte, sink bool) error {
	h := sha256.New()
	buf := make([]byte, 4096)
	var sunk []byte // what the sink took, in order with the reads
	var sinkMu sync.Mutex
	for {
		var calls atomic.Int32
		woke := make(chan struct{}, 2)
		hook := func() {
			calls.Add(1)
			woke <- struct{}{}
		}
		if sink && mrand.IntN(2) == 0 {
			s.NotifyReadableOrDeliver(hook, func(p []byte) (int, error) {
				n := len(p)
				switch mrand.IntN(3) {
				case 0:
					n = 0
				case 1:
					n = mrand.IntN(len(p) + 1)
				}
				sinkMu.Lock()
				sunk = append(sunk, p[:n]...)
				sinkMu.Unlock()
				return n, nil
			})
		} else {
			s.NotifyReadable(hook)
		}
		select {
		case <-woke:
		case <-time.After(20 * time.Second): // hang detection, not a speed bound
			return errors.New("hook never called (a wakeup was lost)")
		}
		// Between the call and this check nothing can drain the stream:
		// this goroutine is its only reader.
		if !s.Readable() {
			return errors.New("hook called while a Read would wait")
		}
		sinkMu.Lock()
		h.Write(sunk)
		sunk = sunk[:0]
		sinkMu.Unlock()
		n, err := s.Read(buf[:1+mrand.IntN(len(buf))])
		h.Write(buf[:n])
		// A second call of the same hook would land here, within the
		// time the next read takes; give it a moment to show.
		if mrand.IntN(16) == 0 {
			time.Sleep(time.Millisecond)
		}
		if c := calls.Load(); c != 1 {
			return fmt.Errorf("one hook was called %d times", c)
		}
		if err == io.EOF {
			if got := [sha256.Size]byte(h.Sum(nil)); got != want {
				return errors.New("data arrived damaged or out of order")
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
	}
}

// A data arrival calls the hook after dropping the lock it buffered under.
// Before that late call, the hook it was meant for may already have been
// fired (by the install-time check, or a later arrival), the reader may have
// drained the stream and installed the next hook: the late call must leave
// that one alone. Deterministic: the late call is made by hand.
func TestNotifyReadableLateCallLeavesNextHook(t *testing.T) {
	client, server := tcpSessions(t, testWindow)
	cs, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	ss, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan struct{}, 1)
	ss.NotifyReadable(func() { first <- struct{}{} })
	<-first
	if _, err := ss.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	// Drained. A new hook on an idle stream...
	var second atomic.Int32
	ss.NotifyReadable(func() { second.Add(1) })
	// ...and the late call of the arrival that brought "a".
	ss.fireReadHookIfBuffered()
	if second.Load() != 0 {
		t.Fatal("an arrival's late call fired the next hook on a drained stream")
	}
	if _, err := cs.Write([]byte("b")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for second.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if c := second.Load(); c != 1 {
		t.Fatalf("hook called %d times for one arrival", c)
	}
}

// Ending our own writing (Close to streamLocalClose) makes nothing
// readable: a parked reader of the other direction must stay parked.
func TestNotifyReadableNotOnLocalClose(t *testing.T) {
	client, server := tcpSessions(t, testWindow)
	cs, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	ss, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ss.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	ss.NotifyReadable(func() { calls.Add(1) })
	if err := ss.Close(); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 0 {
		t.Fatal("hook called when this side closed its writing")
	}
	// The peer's close does make it readable (EOF).
	if err := cs.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if c := calls.Load(); c != 1 {
		t.Fatalf("hook called %d times for the peer's close", c)
	}
	if _, err := ss.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after the peer's close: %v", err)
	}
}
