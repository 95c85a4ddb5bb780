// SIGINT / SIGTERM: remembered, not acted on inside the handler. The training
// loop checks at each step boundary, writes a checkpoint and exits cleanly.
#pragma once

namespace longtrain {

void install_stop_handlers();
bool stop_requested();
int stop_signal();  // the signal number received, 0 if none
void clear_stop_request();

}  // namespace longtrain
