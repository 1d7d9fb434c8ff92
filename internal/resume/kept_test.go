package resume

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// The chunked buffer against a plain slice, through random writes of all
// sizes, drops from the front and rollbacks from the back.
func TestKeptBufMatchesASlice(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var k keptBuf
	var want []byte
	next := byte(0)
	given := map[*[]byte]int{}
	adopted := 0
	for i := range 3000 {
		switch op := rng.IntN(10); {
		case op < 5:
			n := rng.IntN(3 * chunkSize)
			if rng.IntN(2) == 0 {
				n = rng.IntN(2 * smallChunk)
			}
			p := make([]byte, n+rng.IntN(100))
			for j := range p[:n] {
				p[j] = next
				next++
			}
			if rng.IntN(3) == 0 && n > 0 {
				// A writer's buffer, longer than its data.
				k.adopt(&p, n, func(b *[]byte) { given[b]++ })
				adopted++
			} else {
				k.write(p[:n])
			}
			want = append(want, p[:n]...)
		case op < 8 && len(want) > 0:
			n := rng.IntN(len(want) + 1)
			k.drop(n)
			want = want[n:]
		case len(want) > 0:
			n := rng.IntN(len(want) + 1)
			k.unwrite(n)
			want = want[:len(want)-n]
		}
		if k.n != len(want) {
			t.Fatalf("op %d: %d kept, want %d", i, k.n, len(want))
		}
		got := bytes.Join(k.lend(), nil)
		k.lent = false
		if !bytes.Equal(got, want) {
			t.Fatalf("op %d: kept bytes differ (%d vs %d)", i, len(got), len(want))
		}
		if k.n == 0 && k.chunks != nil {
			t.Fatalf("op %d: nothing kept, yet %d chunks held", i, len(k.chunks))
		}
	}
	k.reset()
	if len(given) != adopted {
		t.Fatalf("%d adopted buffers, %d given back", adopted, len(given))
	}
	for b, n := range given {
		if n != 1 {
			t.Fatalf("buffer %p given back %d times", b, n)
		}
	}
}
