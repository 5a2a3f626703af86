// Hub console (provincial hub): the site page's media plus the chair's tools.
import { startPage } from "./ui.js";
import { HubConsole } from "./console.js";

startPage("hub", HubConsole);
