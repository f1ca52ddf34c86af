package transport

import (
	"context"
	"io"
	"testing"
)

// BenchmarkStreamOpen measures what a relay does for each new client over
// each transport: open a stream, write the 24-byte stream header; the agent
// side accepts it, reads the header and answers with one status byte,
// which the relay side reads; both close. Not run by plain `go test`:
//
//	go test ./transport -run '^$' -bench StreamOpen -benchmem
func BenchmarkStreamOpen(b *testing.B) {
	for _, kind := range kinds {
		b.Run(kind, func(b *testing.B) {
			relay, agent := newPair(b, kind)
			ctx := context.Background()
			go func() {
				for {
					st, err := agent.AcceptStream(ctx)
					if err != nil {
						return
					}
					go func() {
						defer st.Close()
						var hdr [24]byte
						if _, err := io.ReadFull(st, hdr[:]); err != nil {
							return
						}
						st.Write([]byte{0})
					}()
				}
			}()
			hdr := make([]byte, 24)
			var status [1]byte
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				st, err := relay.OpenStream(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := st.Write(hdr); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(st, status[:]); err != nil {
					b.Fatal(err)
				}
				st.Close()
			}
		})
	}
}
