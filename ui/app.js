// Placeholder for the server branch's tests; the console branch replaces this file.
"use strict";
document.documentElement.dataset.ready = "1";
