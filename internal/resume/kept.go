package resume

import "sync"

// chunkSize is what one chunk of kept bytes holds; a write of at most
// smallChunk into an empty buffer gets a chunk of that size instead, so
// that the few bytes an interactive or idle connection keeps until the
// next acknowledgment (the session monitor's, within seconds) do not hold
// a whole chunk each: 5,000 connections each keeping one byte held 320 MB.
const (
	chunkSize  = 64 << 10
	smallChunk = 512
)

var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// keptBuf holds written bytes until the peer acknowledges them: a list of
// pooled fixed-size chunks, so that appending at the back and dropping at
// the front never move what is kept. (An append slice resliced from the
// front reallocates and copies everything kept whenever its capacity runs
// out, which cost a bulk connection five times its CPU per byte.)
type keptBuf struct {
	chunks []*[]byte
	head   int // offset in chunks[0] of the first kept byte
	tail   int // bytes used in the last chunk
	n      int
	// lent: the chunks are being resent from (lend); one dropped
	// meanwhile is left to the collector rather than reused.
	lent bool
}

func (k *keptBuf) write(p []byte) {
	for len(p) > 0 {
		switch {
		case len(k.chunks) == 0 && len(p) <= smallChunk:
			b := make([]byte, smallChunk)
			k.chunks = append(k.chunks, &b)
			k.tail = 0
		case len(k.chunks) == 0 || k.tail == len(*k.chunks[len(k.chunks)-1]):
			k.chunks = append(k.chunks, chunkPool.Get().(*[]byte))
			k.tail = 0
		}
		c := copy((*k.chunks[len(k.chunks)-1])[k.tail:], p)
		k.tail += c
		k.n += c
		p = p[c:]
	}
}

// used is how many kept bytes chunk i holds.
func (k *keptBuf) used(i int) int {
	lo, hi := k.span(i)
	return hi - lo
}

// span is where chunk i's kept bytes are in it.
func (k *keptBuf) span(i int) (lo, hi int) {
	hi = len(*k.chunks[i])
	if i == 0 {
		lo = k.head
	}
	if i == len(k.chunks)-1 {
		hi = k.tail
	}
	return lo, hi
}

// drop forgets the first n kept bytes.
func (k *keptBuf) drop(n int) {
	k.n -= n
	for n > 0 {
		if u := k.used(0); n < u {
			k.head += n
			return
		} else {
			n -= u
		}
		k.release(k.chunks[0])
		k.chunks[0] = nil
		k.chunks = k.chunks[1:]
		k.head = 0
	}
	if k.n == 0 {
		k.reset() // an idle connection keeps no chunk
	}
}

// unwrite forgets the last n bytes written.
func (k *keptBuf) unwrite(n int) {
	k.n -= n
	for n > 0 {
		last := len(k.chunks) - 1
		if u := k.used(last); n < u {
			k.tail -= n
			return
		} else {
			n -= u
		}
		k.release(k.chunks[last])
		k.chunks = k.chunks[:last]
		if last > 0 {
			k.tail = len(*k.chunks[last-1])
		}
	}
	if k.n == 0 {
		k.reset()
	}
}

// lend returns the kept bytes, in order, for a resend; until the caller
// sets lent back to false, dropped chunks are not reused.
func (k *keptBuf) lend() [][]byte {
	out := make([][]byte, 0, len(k.chunks))
	for i, c := range k.chunks {
		lo, hi := k.span(i)
		out = append(out, (*c)[lo:hi])
	}
	k.lent = len(out) > 0
	return out
}

// reset forgets everything kept.
func (k *keptBuf) reset() {
	for _, c := range k.chunks {
		k.release(c)
	}
	k.chunks, k.head, k.tail, k.n = nil, 0, 0, 0
}

func (k *keptBuf) release(c *[]byte) {
	if !k.lent && len(*c) == chunkSize {
		chunkPool.Put(c)
	}
}
