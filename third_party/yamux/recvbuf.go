package yamux

import "io"

// recvBuffer holds a stream's received data until its reader takes it
// (local patch, see PATCHES.md). Upstream uses a bytes.Buffer filled with
// io.Copy, whose ReadFrom doubles the buffer whenever less than 512 bytes
// are free after a frame, and whose writes reallocate rather than move
// more than half of it: a reader a little behind an 8 MiB window left a
// 16 MiB buffer (and the 8 MiB one it was copied from, until the next
// GC), kept for the stream's life. This is a ring: data never moves while
// the reader keeps up or lags, the buffer grows by doubling only when
// what it must hold does not fit, never past the session's stream window
// (the most a sender may have unacknowledged, so the most there can be to
// hold), and an empty one is given up once the stream has been quiet
// (Session.ShrinkIdle).
type recvBuffer struct {
	b []byte // the ring; len(b) is its capacity
	r int    // where unread data starts
	n int    // how much is unread
}

func (rb *recvBuffer) Len() int { return rb.n }

func (rb *recvBuffer) Cap() int { return len(rb.b) }

// Read takes up to len(p) bytes.
func (rb *recvBuffer) Read(p []byte) int {
	k := 0
	for k < len(p) && rb.n > 0 {
		end := rb.r + rb.n
		if end > len(rb.b) {
			end = len(rb.b)
		}
		c := copy(p[k:], rb.b[rb.r:end])
		k += c
		rb.r += c
		rb.n -= c
		if rb.r == len(rb.b) {
			rb.r = 0
		}
	}
	if rb.n == 0 {
		// Start again at the front: a reader that keeps up then reads
		// and writes one contiguous span per frame.
		rb.r = 0
	}
	return k
}

// Write appends p; limit is as for reserve.
func (rb *recvBuffer) Write(p []byte, limit int) {
	rb.reserve(len(p), limit)
	a, b := rb.free(len(p))
	copy(b, p[copy(a, p):])
	rb.n += len(p)
}

// fill appends exactly n bytes read from r; limit is as for reserve.
func (rb *recvBuffer) fill(r io.Reader, n, limit int) error {
	rb.reserve(n, limit)
	a, b := rb.free(n)
	if _, err := io.ReadFull(r, a); err != nil {
		return err
	}
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	rb.n += n
	return nil
}

// free returns the n bytes after the unread data, in one or two spans.
// The caller has reserved them.
func (rb *recvBuffer) free(n int) (a, b []byte) {
	w := rb.r + rb.n
	if w >= len(rb.b) {
		w -= len(rb.b)
	}
	if w+n <= len(rb.b) {
		return rb.b[w : w+n], nil
	}
	return rb.b[w:], rb.b[:n-(len(rb.b)-w)]
}

// reserve makes room for n more bytes: a new ring of twice the capacity,
// at most limit, at least what it must hold.
func (rb *recvBuffer) reserve(n, limit int) {
	need := rb.n + n
	if need <= len(rb.b) {
		return
	}
	c := 2 * len(rb.b)
	if c > limit {
		c = limit
	}
	if c < need {
		c = need
	}
	nb := make([]byte, c)
	m := rb.Read(nb)
	rb.b, rb.r, rb.n = nb, 0, m
}
