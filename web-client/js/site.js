// Site page (district / commune): publish camera + mic, watch and hear the meeting.
import { startPage } from "./ui.js";

startPage("site");
