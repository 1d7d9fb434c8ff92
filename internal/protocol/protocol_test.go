package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := Control{Type: TypeHello, Hello: &Hello{Version: Version, Client: "c1", Token: "t",
		Tunnels: []TunnelRequest{{Name: "web", Type: "tcp", RemotePort: 8080}}}}
	if err := WriteFrame(&buf, in); err != nil {
		t.Fatal(err)
	}
	if got := binary.BigEndian.Uint32(buf.Bytes()); int(got) != buf.Len()-4 {
		t.Fatalf("length prefix %d, body %d", got, buf.Len()-4)
	}
	var out Control
	if err := ReadFrame(&buf, &out); err != nil {
		t.Fatal(err)
	}
	if out.Type != TypeHello || out.Hello == nil || out.Hello.Tunnels[0].RemotePort != 8080 {
		t.Fatalf("round trip: %+v", out)
	}
}

func TestFrameTooLargeIsNotRead(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], MaxFrame+1)
	r := &countingReader{r: io.MultiReader(bytes.NewReader(hdr[:]), bytes.NewReader(make([]byte, MaxFrame+1)))}
	var c Control
	err := ReadFrame(r, &c)
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v, want ErrFrameTooLarge", err)
	}
	if r.n != 4 {
		t.Fatalf("read %d bytes, want only the 4-byte length", r.n)
	}
}

func TestWriteFrameTooLarge(t *testing.T) {
	big := StreamHeader{Tunnel: string(bytes.Repeat([]byte("x"), MaxFrame))}
	if err := WriteFrame(io.Discard, big); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v", err)
	}
}

func TestReadFrameTruncated(t *testing.T) {
	var buf bytes.Buffer
	_ = WriteFrame(&buf, StreamHeader{Tunnel: "web"})
	b := buf.Bytes()[:buf.Len()-2]
	var h StreamHeader
	if err := ReadFrame(bytes.NewReader(b), &h); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v, want unexpected EOF", err)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteFrame(&buf, Control{Type: TypeHello, Hello: &Hello{Version: 1, Client: "x"}})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		var c Control
		if err := ReadFrame(bytes.NewReader(data), &c); err != nil {
			return
		}
		// Whatever decodes must encode again and decode to the same type.
		var again bytes.Buffer
		if err := WriteFrame(&again, c); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var c2 Control
		if err := ReadFrame(&again, &c2); err != nil || c2.Type != c.Type {
			t.Fatalf("re-decode: %v %+v", err, c2)
		}
	})
}

// FuzzStreamHeader: whatever bytes arrive first on a data stream, decoding
// them as a stream header fails cleanly or yields a header that encodes
// again; it never panics or allocates past the frame limit.
func FuzzStreamHeader(f *testing.F) {
	b, _ := AppendFrame(nil, StreamHeader{Tunnel: "web", RemoteAddr: "198.51.100.7:51234", Conn: 42})
	f.Add(b)
	f.Add([]byte{0, 0, 0, 4, 'n', 'u', 'l', 'l'})
	f.Add([]byte{0, 0, 0, 13, '{', '"', 'c', 'o', 'n', 'n', '"', ':', '-', '1', '}', ' ', ' '})
	f.Fuzz(func(t *testing.T, data []byte) {
		var h StreamHeader
		if err := ReadFrame(bytes.NewReader(data), &h); err != nil {
			return
		}
		if _, err := AppendFrame(nil, h); err != nil {
			t.Fatalf("re-encode %+v: %v", h, err)
		}
	})
}
