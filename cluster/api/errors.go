package api

import "errors"

// errNoLists: the node serving the call has no gate, hence no lists. The
// API answers it as FAILED_PRECONDITION.
var errNoLists = errors.New("this node has no gate")
