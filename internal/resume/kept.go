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
// chunks, so that appending at the back and dropping at the front never
// move what is kept. (An append slice resliced from the front reallocates
// and copies everything kept whenever its capacity runs out, which cost a
// bulk connection five times its CPU per byte.) A chunk is one of ours,
// pooled, or a buffer the writer handed over (adopt), which saves the
// copy: 13 % of the daemons' CPU on loopback bulk.
type keptBuf struct {
	chunks []chunk
	head   int // offset in chunks[0] of the first kept byte
	n      int
	// lent: the chunks are being resent from (lend); one dropped
	// meanwhile is left to the collector rather than reused.
	lent bool
}

type chunk struct {
	b   *[]byte
	end int // bytes of data in it
	// give returns an adopted buffer to its owner; nil for one of ours.
	give func(*[]byte)
}

func (k *keptBuf) write(p []byte) {
	for len(p) > 0 {
		last := len(k.chunks) - 1
		if last < 0 || k.chunks[last].give != nil || k.chunks[last].end == len(*k.chunks[last].b) {
			var b *[]byte
			if last < 0 && len(p) <= smallChunk {
				s := make([]byte, smallChunk)
				b = &s
			} else {
				b = chunkPool.Get().(*[]byte)
			}
			k.chunks = append(k.chunks, chunk{b: b})
			last++
		}
		c := &k.chunks[last]
		n := copy((*c.b)[c.end:], p)
		c.end += n
		k.n += n
		p = p[n:]
	}
}

// adopt keeps the first n bytes of *b as they are; give gets b back once
// they are dropped.
func (k *keptBuf) adopt(b *[]byte, n int, give func(*[]byte)) {
	k.chunks = append(k.chunks, chunk{b: b, end: n, give: give})
	k.n += n
}

// used is how many kept bytes chunk i holds.
func (k *keptBuf) used(i int) int {
	if i == 0 {
		return k.chunks[0].end - k.head
	}
	return k.chunks[i].end
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
		k.chunks[0] = chunk{}
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
			k.chunks[last].end -= n
			return
		} else {
			n -= u
		}
		k.release(k.chunks[last])
		k.chunks = k.chunks[:last]
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
		lo := 0
		if i == 0 {
			lo = k.head
		}
		out = append(out, (*c.b)[lo:c.end])
	}
	k.lent = len(out) > 0
	return out
}

// reset forgets everything kept.
func (k *keptBuf) reset() {
	for _, c := range k.chunks {
		k.release(c)
	}
	k.chunks, k.head, k.n = nil, 0, 0
}

func (k *keptBuf) release(c chunk) {
	switch {
	case k.lent:
	case c.give != nil:
		c.give(c.b)
	case len(*c.b) == chunkSize:
		chunkPool.Put(c.b)
	}
}
