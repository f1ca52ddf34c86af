package tunnel

import (
	"errors"
	"fmt"

	"github.com/relaytun/relay/transport"
)

// ErrorCode says why the relay refused a session or a request. Codes travel
// in ERROR frames; the text beside them is for people.
type ErrorCode uint16

// Error codes. New codes may be added; an agent treats an unknown code as a
// refusal with the text it came with.
const (
	CodeInternal       ErrorCode = 1  // the relay failed; try again later
	CodeBadVersion     ErrorCode = 2  // the two ends speak different protocol versions
	CodeUnauthorized   ErrorCode = 3  // wrong or unknown token
	CodePortNotAllowed ErrorCode = 4  // the requested port is outside what the relay allows
	CodePortTaken      ErrorCode = 5  // the requested port is in use
	CodeNoPortFree     ErrorCode = 6  // every allowed port is in use
	CodeBadRequest     ErrorCode = 7  // a malformed or invalid request (bad name, protocol)
	CodeUnsupported    ErrorCode = 8  // a feature this relay does not offer
	CodeProtocol       ErrorCode = 9  // a frame the receiver could not understand
	CodeShutdown       ErrorCode = 10 // the relay is stopping
	CodeForbidden      ErrorCode = 11 // the token's scope does not allow it (name, UDP)
	CodeLimit          ErrorCode = 12 // a limit of the token is reached (max_tunnels)
)

var codeNames = map[ErrorCode]string{
	CodeInternal:       "internal",
	CodeBadVersion:     "bad-version",
	CodeUnauthorized:   "unauthorized",
	CodePortNotAllowed: "port-not-allowed",
	CodePortTaken:      "port-taken",
	CodeNoPortFree:     "no-port-free",
	CodeBadRequest:     "bad-request",
	CodeUnsupported:    "unsupported",
	CodeProtocol:       "protocol",
	CodeShutdown:       "shutdown",
	CodeForbidden:      "forbidden",
	CodeLimit:          "limit",
}

func (c ErrorCode) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code-%d", uint16(c))
}

// RefusedError is the relay (or agent) saying no. Retrying will not help
// unless the user changes something, except for CodeInternal and
// CodeShutdown.
type RefusedError struct {
	Code ErrorCode
	Text string
}

func (e *RefusedError) Error() string { return e.Text }

// Temporary reports whether trying again later may succeed.
func (e *RefusedError) Temporary() bool {
	return e.Code == CodeInternal || e.Code == CodeShutdown
}

// closedBy reports whether err is the end of a session the peer closed
// with code (over QUIC, where the close can overtake the ERROR before it).
func closedBy(err error, code ErrorCode) bool {
	c, ok := transport.PeerClosed(err)
	return ok && c == uint64(code)
}

// isRefused reports whether err is a refusal with code.
func isRefused(err error, code ErrorCode) bool {
	var ref *RefusedError
	return errors.As(err, &ref) && ref.Code == code
}

// Sentinel errors.
var (
	// ErrSessionClosed is returned once the agent's session with the relay
	// has ended.
	ErrSessionClosed = errors.New("session with the relay closed")
	// ErrLastTunnelClosed matches (errors.Is) Run's error when the relay
	// closed the agent's last tunnel for good (CLOSED), which stops it;
	// the error is also that tunnel's *RefusedError.
	ErrLastTunnelClosed = errors.New("the relay closed the agent's last tunnel")
)

// lastTunnelClosed is the CLOSED that left the agent with no tunnel: its
// text is the tunnel's refusal, and it is ErrLastTunnelClosed too.
type lastTunnelClosed struct{ *RefusedError }

func (e *lastTunnelClosed) Unwrap() error        { return e.RefusedError }
func (e *lastTunnelClosed) Is(target error) bool { return target == ErrLastTunnelClosed }
